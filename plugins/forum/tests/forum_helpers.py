"""Shared settings and helpers of the forum tests (conftest puts this dir on sys.path)."""

import trio

FAST = {
    "plugins.forum.pow_bits": 4,
    "plugins.forum.sync_interval": 5.0,
    "plugins.forum.maintenance_interval": 30.0,
    "plugins.forum.new_identity_rate": 1000,
}


async def wait_for(predicate, timeout=60.0):
    """Poll state that several nodes change (there is no single event to wait on)."""
    with trio.fail_after(timeout):
        while not predicate():  # noqa: ASYNC110
            await trio.sleep(0.05)
