"""Public helpers for testing ZEONE and its plugins.

``TestNetwork`` runs several real nodes in one process on an in-memory network whose latency,
loss and partitions you control; every node knows every other node's address, so
``a.rpc.request(b.node_id, ...)`` just works. With pytest, the ``zeone_network`` fixture (from the
pytest plugin this package registers) gives you one, started in the test's nursery; combine it with
pytest-trio's ``autojump_clock`` fixture to make simulated time free::

    async def test_greeting(zeone_network, autojump_clock):
        a = await zeone_network.add_node(enable=["hello"])
        b = await zeone_network.add_node(enable=["hello"])
        reply = await a.rpc.request(b.node_id, "/zeone/hello/1", {"name": "a"})


For everything between a shell and the wire, ``zeone_processes`` starts real ``zeone run``
processes (`NodeProcesses`, `NodeProcess`; poll with `wait_for`).
"""

from zeone.testing.network import TestNetwork, make_config, open_network
from zeone.testing.processes import NodeProcess, NodeProcesses, wait_for

__all__ = [
    "NodeProcess",
    "NodeProcesses",
    "TestNetwork",
    "make_config",
    "open_network",
    "wait_for",
]
