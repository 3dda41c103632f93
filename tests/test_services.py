"""Supervision on the virtual clock: restart backoff, required services, ordered shutdown."""

from __future__ import annotations

import itertools
import logging
from pathlib import Path
from typing import Any

import pytest
import trio
from trio.testing import MockClock

from zeone.identity import Identity
from zeone.node import Node
from zeone.services import (
    RESTART_MAX_DELAY,
    FatalServiceError,
    Service,
    Supervised,
    supervise,
)


class Crashy:
    """Crashes on its first ``crashes`` runs (after reporting ready), then runs forever.

    ``durations[i]`` is how long run ``i`` lasts before it crashes (default 0).
    """

    def __init__(
        self,
        crashes: int,
        *,
        name: str = "crashy",
        before_ready: bool = False,
        durations: dict[int, float] | None = None,
    ) -> None:
        self.name = name
        self.crashes = crashes
        self.before_ready = before_ready
        self.durations = durations or {}
        self.starts: list[float] = []
        self.settled = trio.Event()

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        attempt = len(self.starts)
        self.starts.append(trio.current_time())
        if attempt >= self.crashes:
            task_status.started()
            self.settled.set()
            await trio.sleep_forever()
        if not self.before_ready:
            task_status.started()
        await trio.sleep(self.durations.get(attempt, 0))
        raise RuntimeError(f"crash #{attempt}")


class Recorder:
    """Records when it starts and stops; stopping takes ``stop_takes`` seconds (shielded)."""

    def __init__(self, name: str, log: list[tuple[str, str, float]], stop_takes: float = 0) -> None:
        self.name = name
        self.log = log
        self.stop_takes = stop_takes

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        self.log.append(("start", self.name, trio.current_time()))
        task_status.started()
        try:
            await trio.sleep_forever()
        finally:
            with trio.CancelScope(shield=True):
                await trio.sleep(self.stop_takes)
            self.log.append(("stop", self.name, trio.current_time()))


def make_node(tmp_path, make_plugin, make_catalog, node_config, *plugins, enable, **settings):
    catalog = make_catalog(*plugins)
    config = node_config(
        tmp_path,
        catalog=catalog,
        enable=enable,
        settings={"api.enabled": False, **settings},
    )
    return Node(config, catalog=catalog, identity=Identity.generate())


def service_plugin(make_plugin, name: str, *services: Any, **info: Any):
    def zeone_services(node):
        return list(services)

    return make_plugin(name, zeone_services=zeone_services, **info)


def entry_of(node: Node, service: Any) -> Supervised:
    return next(e for e in node._services if e.service is service)


async def test_crashing_service_is_restarted_with_backoff(
    autojump_clock: MockClock, tmp_path: Path, make_plugin, make_catalog, node_config
) -> None:
    crashy = Crashy(3)
    node = make_node(
        tmp_path,
        make_plugin,
        make_catalog,
        node_config,
        service_plugin(make_plugin, "flaky", crashy),
        enable=["flaky"],
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(node.run)
        await crashy.settled.wait()
        await trio.sleep(0.5)  # let the supervisor see the 4th run report ready
        t0 = crashy.starts[0]
        assert [t - t0 for t in crashy.starts] == [0, 1, 3, 7]  # waits of 1, 2 and 4 s
        entry = entry_of(node, crashy)
        assert entry.restarts == 3
        assert entry.state == "running"
        assert entry.last_error == "RuntimeError: crash #2"
        snapshot = next(s for s in node.status()["services"] if s["plugin"] == "flaky")
        assert snapshot == {
            "plugin": "flaky",
            "service": "crashy",
            "state": "running",
            "restarts": 3,
            "last_error": "RuntimeError: crash #2",
        }
        node.stop()
    assert entry.state == "stopped"


async def test_backoff_is_capped_and_resets_after_a_stable_run(autojump_clock: MockClock) -> None:
    crashy = Crashy(10, durations={7: 100.0})
    entry = Supervised("flaky", crashy, required=False)
    async with trio.open_nursery() as nursery:
        await nursery.start(supervise, entry, pytest.fail)
        await crashy.settled.wait()
        gaps = [b - a for a, b in itertools.pairwise(crashy.starts)]
        # 1, 2, 4, ... capped at the maximum; run 7 lasted 100 s, so the next wait is 1 s again
        assert gaps[:7] == [1, 2, 4, 8, 16, 32, RESTART_MAX_DELAY]
        assert gaps[7] == 100 + 1
        assert gaps[8] == 2
        assert entry.restarts == 10
        nursery.cancel_scope.cancel()
    assert entry.done.is_set()


async def test_crash_before_ready_does_not_hold_up_the_node(
    autojump_clock: MockClock, tmp_path: Path, make_plugin, make_catalog, node_config
) -> None:
    crashy = Crashy(2, before_ready=True)
    node = make_node(
        tmp_path,
        make_plugin,
        make_catalog,
        node_config,
        service_plugin(make_plugin, "flaky", crashy),
        enable=["flaky"],
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(node.run)
        assert node.started.is_set()
        entry = entry_of(node, crashy)
        assert entry.state == "restarting"
        assert entry.last_error == "RuntimeError: crash #0"
        await crashy.settled.wait()
        assert entry.restarts == 2
        node.stop()


async def test_required_service_crash_stops_the_node(
    autojump_clock: MockClock, tmp_path: Path, make_plugin, make_catalog, node_config
) -> None:
    events: list[tuple[str, str, float]] = []
    bystander = Recorder("bystander", events)
    vital = Crashy(1, name="vital", durations={0: 5.0})
    node = make_node(
        tmp_path,
        make_plugin,
        make_catalog,
        node_config,
        service_plugin(make_plugin, "other", bystander),
        service_plugin(make_plugin, "ledger", vital, required=True),
        enable=["other", "ledger"],
    )
    with pytest.raises(FatalServiceError) as info:
        await node.run()
    assert str(info.value) == "required service ledger/vital crashed: RuntimeError: crash #0"
    assert info.value.exit_code == 1
    assert entry_of(node, vital).state == "failed"
    assert entry_of(node, vital).restarts == 0
    assert len(vital.starts) == 1  # never restarted
    assert entry_of(node, bystander).state == "stopped"
    assert [e[:2] for e in events] == [("start", "bystander"), ("stop", "bystander")]
    assert node.stopped.is_set()
    assert not node.runtime_file.exists()


async def test_required_service_crashing_at_start_up_stops_what_started(
    autojump_clock: MockClock, tmp_path: Path, make_plugin, make_catalog, node_config
) -> None:
    events: list[tuple[str, str, float]] = []
    early = Recorder("early", events)
    vital = Crashy(1, name="vital", before_ready=True)
    later = Recorder("later", events)
    node = make_node(
        tmp_path,
        make_plugin,
        make_catalog,
        node_config,
        service_plugin(make_plugin, "first", early),
        service_plugin(make_plugin, "ledger", vital, required=True),
        service_plugin(make_plugin, "last", later),
        enable=["first", "ledger", "last"],
    )
    # the error itself, not a nursery's ExceptionGroup
    with pytest.raises(FatalServiceError, match="ledger/vital crashed: RuntimeError: crash #0"):
        await node.run()
    assert [e[:2] for e in events] == [("start", "early"), ("stop", "early")]
    assert not node.started.is_set()
    assert node.stopped.is_set()
    assert not node.runtime_file.exists()


async def test_stop_cancels_services_one_at_a_time_in_reverse_start_order(
    autojump_clock: MockClock, tmp_path: Path, make_plugin, make_catalog, node_config
) -> None:
    events: list[tuple[str, str, float]] = []
    a, b, c = (Recorder(n, events, stop_takes=1.0) for n in "abc")
    node = make_node(
        tmp_path,
        make_plugin,
        make_catalog,
        node_config,
        service_plugin(make_plugin, "pa", a),
        service_plugin(make_plugin, "pb", b, requires=["pa"]),
        service_plugin(make_plugin, "pc", c),
        enable=["pc", "pb"],  # pa starts before pb because pb requires it
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(node.run)
        assert [e[:2] for e in events] == [("start", "c"), ("start", "a"), ("start", "b")]
        stop_at = trio.current_time()
        node.stop()
        node.stop()  # idempotent
    stops = [(name, at - stop_at) for kind, name, at in events if kind == "stop"]
    # each one finished stopping before the next was cancelled
    assert stops == [("b", 1.0), ("a", 2.0), ("c", 3.0)]
    assert all(s["state"] == "stopped" for s in node.status()["services"])


async def test_service_that_returns_is_marked_finished(
    autojump_clock: MockClock, tmp_path: Path, make_plugin, make_catalog, node_config
) -> None:
    class OneShot:
        name = "oneshot"

        def __init__(self) -> None:
            self.runs = 0

        async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
            self.runs += 1
            task_status.started()
            await trio.sleep(3)

    oneshot = OneShot()
    node = make_node(
        tmp_path,
        make_plugin,
        make_catalog,
        node_config,
        service_plugin(make_plugin, "migrate", oneshot),
        enable=["migrate"],
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(node.run)
        await entry_of(node, oneshot).done.wait()
        entry = entry_of(node, oneshot)
        assert entry.state == "finished"
        assert entry.restarts == 0
        assert entry.last_error is None
        await trio.sleep(100)
        assert oneshot.runs == 1  # not restarted
        assert not node.stopping.is_set()  # the node keeps running
        node.stop()
    assert entry.state == "finished"


async def test_shutdown_timeout_bounds_the_wait_for_a_stuck_service(
    autojump_clock: MockClock,
    tmp_path: Path,
    make_plugin,
    make_catalog,
    node_config,
    caplog: pytest.LogCaptureFixture,
) -> None:
    events: list[tuple[str, str, float]] = []
    before = Recorder("before", events)

    class Stubborn:
        """Ignores cancellation for 30 s inside a shielded scope (a long durable write)."""

        name = "stubborn"

        async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
            task_status.started()
            try:
                await trio.sleep_forever()
            finally:
                with trio.CancelScope(shield=True):
                    await trio.sleep(30)
                events.append(("stop", "stubborn", trio.current_time()))

    node = make_node(
        tmp_path,
        make_plugin,
        make_catalog,
        node_config,
        service_plugin(make_plugin, "first", before),
        service_plugin(make_plugin, "slow", Stubborn()),
        enable=["first", "slow"],
        **{"node.shutdown_timeout": 2.0},
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(node.run)
        stop_at = trio.current_time()
        with caplog.at_level(logging.ERROR, logger="zeone.node"):
            node.stop()
            await node.stopped.wait()
    returned_after = trio.current_time() - stop_at
    stops = {name: at - stop_at for kind, name, at in events if kind == "stop"}
    # the node gave up on the stuck service at the deadline, said so, and moved on
    assert stops["before"] == 2.0
    assert "service slow/stubborn did not stop within the shutdown timeout" in caplog.text
    # ...but structured concurrency still waits for the shielded section to end: nothing in the
    # process can abandon a running task. `zeone run` bounds this with its watchdog (os._exit).
    assert returned_after == stops["stubborn"] == 30.0


@pytest.mark.xfail(
    strict=True,
    reason="Node.run() cannot return while a service task is still shielded (trio nurseries wait "
    "for their children); only the CLI watchdog bounds shutdown today",
)
async def test_run_returns_within_the_shutdown_timeout(
    autojump_clock: MockClock, tmp_path: Path, make_plugin, make_catalog, node_config
) -> None:
    class Stubborn:
        name = "stubborn"

        async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
            task_status.started()
            try:
                await trio.sleep_forever()
            finally:
                with trio.CancelScope(shield=True):
                    await trio.sleep(30)

    node = make_node(
        tmp_path,
        make_plugin,
        make_catalog,
        node_config,
        service_plugin(make_plugin, "slow", Stubborn()),
        enable=["slow"],
        **{"node.shutdown_timeout": 2.0},
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(node.run)
        stop_at = trio.current_time()
        node.stop()
    assert trio.current_time() - stop_at <= 2.0 + 1.0


def test_services_protocol_is_structural() -> None:
    assert isinstance(Recorder("x", []), Service)
    assert not isinstance(object(), Service)
