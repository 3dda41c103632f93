"""Services: the long-running work of the kernel and of plugins, supervised by the node.

A service is any object with a ``name`` and ``async def run(self, *, task_status)``. The node
starts each one with ``nursery.start`` (so start-up waits until it is ready), restarts one that
crashes with exponential backoff, or stops the whole node if its plugin is marked ``required``.
Shutdown cancels services one at a time in reverse start order.
"""

from __future__ import annotations

import logging
from typing import Any, Protocol, runtime_checkable

import attrs
import trio

from zeone.errors import ZeoneError

log = logging.getLogger(__name__)

RESTART_INITIAL_DELAY = 1.0
RESTART_MAX_DELAY = 60.0
#: A service that ran this long before crashing is considered healthy: its backoff resets.
RESTART_STABLE_AFTER = 60.0


@runtime_checkable
class Service(Protocol):
    name: str

    async def run(self, *, task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED) -> None:
        """Run until cancelled; call ``task_status.started()`` once ready."""


class FatalServiceError(ZeoneError):
    """A service of a required plugin crashed; the node stops."""


def _unwrap(exc: BaseException) -> BaseException:
    """The error itself rather than the nursery's one-member ExceptionGroup around it."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


@attrs.define(eq=False)
class Supervised:
    """Book-keeping for one service under the node's supervision."""

    plugin: str
    service: Service
    required: bool
    state: str = "pending"
    restarts: int = 0
    last_error: str | None = None
    scope: trio.CancelScope = attrs.Factory(trio.CancelScope)
    done: trio.Event = attrs.Factory(trio.Event)

    @property
    def label(self) -> str:
        return f"{self.plugin}/{self.service.name}"

    def snapshot(self) -> dict[str, Any]:
        return {
            "plugin": self.plugin,
            "service": self.service.name,
            "state": self.state,
            "restarts": self.restarts,
            "last_error": self.last_error,
        }


async def supervise(
    entry: Supervised,
    on_fatal: Any,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run ``entry.service`` until cancelled, applying the restart policy.

    ``task_status.started()`` is reported once the first run is ready -- or once it has failed, for
    a non-required service, so one broken plugin does not keep the node from starting.
    """
    delay = RESTART_INITIAL_DELAY
    try:
        with entry.scope:
            while True:
                started_at = trio.current_time()
                try:
                    async with trio.open_nursery() as nursery:
                        await nursery.start(_run_once, entry)
                        entry.state = "running"
                        task_status.started()
                        task_status = trio.TASK_STATUS_IGNORED
                except Exception as exc:
                    error = _unwrap(exc)
                    entry.last_error = f"{type(error).__name__}: {error}"
                    if entry.required:
                        entry.state = "failed"
                        log.error("required service %s crashed: %s", entry.label, entry.last_error)
                        on_fatal(
                            FatalServiceError(
                                f"required service {entry.label} crashed: {entry.last_error}"
                            )
                        )
                        task_status.started()
                        return
                    log.error(
                        "service %s crashed (%s); restarting in %.0fs",
                        entry.label,
                        entry.last_error,
                        delay,
                        exc_info=exc,
                    )
                else:
                    entry.state = "finished"
                    log.info("service %s finished", entry.label)
                    task_status.started()
                    return
                entry.state = "restarting"
                entry.restarts += 1
                task_status.started()
                task_status = trio.TASK_STATUS_IGNORED
                if trio.current_time() - started_at >= RESTART_STABLE_AFTER:
                    delay = RESTART_INITIAL_DELAY
                await trio.sleep(delay)
                delay = min(delay * 2, RESTART_MAX_DELAY)
    finally:
        if entry.state in ("running", "restarting", "pending"):
            entry.state = "stopped"
        entry.done.set()


async def _run_once(entry: Supervised, *, task_status: trio.TaskStatus[None]) -> None:
    await entry.service.run(task_status=task_status)
