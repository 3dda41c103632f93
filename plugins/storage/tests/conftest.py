import pytest

FAST = {
    "plugins.storage.stripe_size": 64 * 1024,
    "plugins.storage.audit_interval": 0.0,
    "plugins.storage.hedge_after": 0.5,
    "plugins.storage.request_timeout": 5.0,
}


@pytest.fixture
def fast_settings():
    return dict(FAST)


@pytest.fixture
async def net(zeone_network):
    """`zeone_network` that lets provider announcements finish before the nodes stop.

    Works around a kernel race (reported): a DHT STORE arriving while a node shuts down can be
    committed in a worker thread after DhtService closed the store's SQLite connection, which
    crashes the process. Waiting here keeps shutdowns free of in-flight STOREs.
    """
    yield zeone_network
    await settle(zeone_network)


async def settle(network) -> None:
    """Wait until no node has a provider announcement in flight (see `net`)."""
    import trio

    with trio.move_on_after(15):
        for node in network.nodes:
            if "storage" in node.plugin_state:
                await node.plugin_state["storage"].wait_announced()
