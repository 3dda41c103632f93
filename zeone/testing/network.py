"""In-process networks of real nodes for tests and simulations."""

from __future__ import annotations

import hashlib
import tempfile
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio

from zeone.config import Config, load_config
from zeone.identity import Identity
from zeone.net.memory import MemoryNetwork, MemoryTransport
from zeone.node import Node
from zeone.plugins import Catalog


def make_config(
    data_dir: Path,
    *,
    enable: Sequence[str] = (),
    settings: Mapping[str, Any] | None = None,
    catalog: Catalog | None = None,
) -> Config:
    """A validated node config from dotted ``settings`` (``{"network.idle_timeout": 5}``)."""
    overrides: dict[str, Any] = {
        "node.data_dir": str(data_dir),
        "api.enabled": False,
        "network.listen": [],
        "plugins.enable": list(enable),
    }
    overrides.update(settings or {})
    return load_config(
        None,
        environ={},
        overrides=overrides,
        plugin_schemas=catalog.schemas if catalog is not None else None,
    )


class TestNetwork:
    """Real nodes on one :class:`~zeone.net.memory.MemoryNetwork`, run in ``nursery``.

    ``latency``, ``loss`` and the other keyword arguments set the network's default link
    conditions (see ``MemoryNetwork``); ``memory.set_link(...)`` overrides one pair. Node ``i`` is
    named ``node{i}`` and listens on ``memory://node{i}``; its identity is derived from ``seed``
    and ``i``, so runs are reproducible.
    """

    __test__ = False  # not a pytest test class despite the name

    def __init__(
        self,
        nursery: trio.Nursery,
        data_root: Path,
        *,
        plugins: Iterable[Any] = (),
        entry_points: bool = True,
        seed: int = 0,
        **conditions: Any,
    ) -> None:
        self.nursery = nursery
        self.data_root = Path(data_root)
        self.seed = seed
        self.memory = MemoryNetwork(seed=seed, **conditions)
        self.catalog = Catalog.discover(entry_points=entry_points, extra=list(plugins))
        self.nodes: list[Node] = []
        self._next_index = 0
        self._names: dict[Node, str] = {}

    def __getitem__(self, index: int) -> Node:
        return self.nodes[index]

    def __len__(self) -> int:
        return len(self.nodes)

    def name_of(self, node: Node) -> str:
        return self._names[node]

    async def add_node(
        self,
        *,
        enable: Sequence[str] = (),
        settings: Mapping[str, Any] | None = None,
        api: bool = False,
    ) -> Node:
        """Start one more node and return it once all its services are ready."""
        index = self._next_index  # reserved now: add_node may run concurrently
        self._next_index += 1
        name = f"node{index}"
        data_dir = self.data_root / name
        overrides = {"network.listen": [f"memory://{name}"], **(settings or {})}
        if api:
            overrides.update({"api.enabled": True, "api.bind": "127.0.0.1:0"})
        config = make_config(data_dir, enable=enable, settings=overrides, catalog=self.catalog)
        seed = hashlib.sha256(f"zeone-test:{self.seed}:{index}".encode()).digest()
        node = Node(
            config,
            identity=Identity.from_seed(seed),
            catalog=self.catalog,
            transports=[MemoryTransport(self.memory, name=name)],
            write_runtime_file=False,
        )
        self._names[node] = name
        await self.nursery.start(node.run)
        self.nodes.append(node)
        # A perfect address book: every node can dial every other by id alone.
        for other in self.nodes[:-1]:
            other.network.book[node.node_id] = list(node.network.listen_addresses)
            node.network.book[other.node_id] = list(other.network.listen_addresses)
        return node

    async def add_nodes(self, count: int, **kwargs: Any) -> list[Node]:
        return [await self.add_node(**kwargs) for _ in range(count)]

    async def connect_all(self) -> None:
        """Open a connection between every pair of nodes."""
        for i, a in enumerate(self.nodes):
            for b in self.nodes[i + 1 :]:
                await a.network.connect(b.node_id)

    def partition(self, *groups: Iterable[Node], break_links: bool = False) -> None:
        """Split the network; nodes in different groups cannot reach each other until heal()."""
        self.memory.partition(
            *({self.name_of(n) for n in group} for group in groups), break_links=break_links
        )

    def heal(self) -> None:
        self.memory.heal()

    async def stop_node(self, node: Node) -> None:
        """Stop one node gracefully and wait until it has stopped."""
        node.stop()
        await node.stopped.wait()

    async def stop(self) -> None:
        for node in reversed(self.nodes):
            node.stop()
        for node in self.nodes:
            await node.stopped.wait()


@asynccontextmanager
async def open_network(
    nodes: int = 0,
    *,
    enable: Sequence[str] = (),
    data_root: Path | None = None,
    **kwargs: Any,
) -> AsyncIterator[TestNetwork]:
    """A running TestNetwork with ``nodes`` nodes; stopped when the block exits."""
    with tempfile.TemporaryDirectory(prefix="zeone-test-") as tmp:
        async with trio.open_nursery() as nursery:
            network = TestNetwork(nursery, Path(data_root or tmp), **kwargs)
            await network.add_nodes(nodes, enable=enable)
            try:
                yield network
            finally:
                with trio.CancelScope(shield=True):
                    await network.stop()
