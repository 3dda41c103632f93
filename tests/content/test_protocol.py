"""`/zeone/content/1` between real nodes on the in-memory network, registered the way the storage
and CDN plugins will register it, plus provider records through the DHT."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio

from zeone import PluginInfo
from zeone.content import (
    PROTOCOL,
    ChunkVerificationError,
    ContentError,
    ContentId,
    ContentNotFound,
    ContentStore,
    announce,
    export_to_file,
    fetch_chunk,
    fetch_leaves,
    fetch_manifest,
    find_holders,
    peer_fetch,
    query_have,
    register_content_protocol,
    request_chunk,
    stop_announcing,
    stream_verified,
)
from zeone.identity import Identity
from zeone.rpc import RemoteError
from zeone.testing import open_network

ME = Identity.from_seed(b"t" * 32)
CHUNK = 4096


class HolderPlugin:
    """What plugins/storage and plugins/cdn do: own a store, serve it over the content protocol."""

    def __init__(self, name: str) -> None:
        self.__name__ = name
        self.stores: dict[Any, ContentStore] = {}

    def zeone_plugin_info(self) -> PluginInfo:
        return PluginInfo(name=self.__name__, version="1")

    def zeone_register_protocols(self, register, node) -> None:
        store = ContentStore(node.config.data_dir / self.__name__)
        self.stores[node] = store
        register_content_protocol(register, node, store)

    def close(self) -> None:
        for store in self.stores.values():
            store.close()


class LiarPlugin:
    """A hostile peer: answers the content protocol with plausible but wrong data."""

    __name__ = "liar"

    def __init__(self) -> None:
        self.answers: dict[str, Any] = {}

    def zeone_plugin_info(self) -> PluginInfo:
        return PluginInfo(name="liar", version="1")

    def zeone_register_protocols(self, register, node) -> None:
        async def handle(request) -> Any:
            return self.answers[request.payload["op"]]

        register(PROTOCOL, handle)


async def _one(data: bytes) -> AsyncIterator[bytes]:
    yield data


@pytest.fixture
def plugins():
    made = [HolderPlugin("cdnish"), HolderPlugin("storageish"), LiarPlugin()]
    yield made
    made[0].close()
    made[1].close()


async def test_two_nodes_fetch_verified_content(tmp_path: Path, plugins) -> None:
    cdn, storage, _liar = plugins
    data = os.urandom(9 * CHUNK + 17)
    async with open_network(data_root=tmp_path, plugins=plugins) as net:
        a = await net.add_node(enable=["cdnish"])
        b = await net.add_node(enable=["cdnish", "storageish"])
        built = await cdn.stores[b].import_stream(_one(data), ME, chunk_size=CHUNK)
        cid = built.content_id
        other = await storage.stores[b].import_stream(_one(b"other" * 99), ME, chunk_size=CHUNK)

        manifest = await fetch_manifest(a, b.node_id, cid)
        assert manifest == built.manifest
        # both plugins on b share one registration and both stores are served
        assert (await fetch_manifest(a, b.node_id, other.content_id)) == other.manifest
        assert await query_have(a, b.node_id, cid) == (True, 10)
        assert await query_have(a, b.node_id, ContentId(b"\x01" * 32)) == (False, 0)

        assert await fetch_chunk(a, b.node_id, manifest, 9) == data[9 * CHUNK :]
        got = b"".join(
            [
                piece
                async for piece in stream_verified(
                    manifest, peer_fetch(a, b.node_id, manifest), source=str(b.node_id), parallel=4
                )
            ]
        )
        assert got == data

        # a cache: leaves first, then chunks, then it serves others itself
        cache = cdn.stores[a]
        await cache.add_manifest(manifest, await fetch_leaves(a, b.node_id, manifest))
        await cache.put_chunks(
            cid, [(i, await fetch_chunk(a, b.node_id, manifest, i)) for i in range(10)]
        )
        assert await cache.has(cid)
        out = tmp_path / "copy.bin"
        await export_to_file(manifest, peer_fetch(b, a.node_id, manifest), out)
        assert out.read_bytes() == data


async def test_bad_requests_get_clear_errors(tmp_path: Path, plugins) -> None:
    cdn = plugins[0]
    async with open_network(data_root=tmp_path, plugins=plugins) as net:
        a, b = await net.add_nodes(2, enable=["cdnish"])
        built = await cdn.stores[b].import_stream(_one(b"x" * 5000), ME, chunk_size=CHUNK)
        cid = built.content_id
        missing = ContentId(b"\x02" * 32)
        with pytest.raises(ContentNotFound, match="not held"):
            await fetch_manifest(a, b.node_id, missing)
        with pytest.raises(ContentNotFound, match="chunk 2"):
            await request_chunk(a, b.node_id, cid, 2)
        for body, message in [
            ("nonsense", "expected a map"),
            ({"op": "chunk", "cid": b"short"}, "32 bytes"),
            ({"op": "chunk", "cid": cid.digest, "index": "0"}, "integer"),
            ({"op": "leaves", "cid": cid.digest, "start": 0, "count": 10**6}, "count must"),
            ({"op": "steal", "cid": cid.digest}, "unknown op"),
        ]:
            with pytest.raises(RemoteError, match=message) as info:
                await a.rpc.request(b.node_id, PROTOCOL, body)
            assert info.value.code == "bad-request"
        # b still serves after all that
        assert (await fetch_manifest(a, b.node_id, cid)) == built.manifest


async def test_a_peer_serving_a_wrong_chunk_is_caught_at_that_chunk(
    tmp_path: Path, plugins
) -> None:
    cdn = plugins[0]
    data = os.urandom(6 * CHUNK)
    async with open_network(data_root=tmp_path, plugins=plugins) as net:
        a, b = await net.add_nodes(2, enable=["cdnish"])
        built = await cdn.stores[b].import_stream(_one(data), ME, chunk_size=CHUNK)
        path = cdn.stores[b].blob_path(built.content_id)
        with path.open("r+b") as handle:  # b's copy of chunk 3 is rotten
            handle.seek(3 * CHUNK + 100)
            handle.write(b"\x00\x01")
        received = []
        with pytest.raises(ChunkVerificationError) as info:
            async for piece in stream_verified(
                built.manifest,
                peer_fetch(a, b.node_id, built.manifest),
                source=str(b.node_id),
            ):
                received.append(piece)
        assert (info.value.index, info.value.source) == (3, str(b.node_id))
        assert b"".join(received) == data[: 3 * CHUNK]
        with pytest.raises(ChunkVerificationError, match=f"chunk 3 from {b.node_id}"):
            await fetch_chunk(a, b.node_id, built.manifest, 3)


async def test_a_lying_peer_is_detected(tmp_path: Path, plugins) -> None:
    cdn, _storage, liar = plugins
    data = os.urandom(3 * CHUNK)
    async with open_network(data_root=tmp_path, plugins=plugins) as net:
        a = await net.add_node(enable=["cdnish"])
        c = await net.add_node(enable=["liar"])
        built = await cdn.stores[a].import_stream(_one(data), ME, chunk_size=CHUNK)
        decoy = await cdn.stores[a].import_stream(_one(data[:100]), ME, chunk_size=CHUNK)
        manifest, cid = built.manifest, built.content_id

        liar.answers["manifest"] = {"manifest": decoy.manifest.encode()}
        with pytest.raises(ContentError, match="does not hash to the requested id"):
            await fetch_manifest(a, c.node_id, cid)
        liar.answers["manifest"] = {"manifest": 42}
        with pytest.raises(ContentError, match="no manifest bytes"):
            await fetch_manifest(a, c.node_id, cid)
        liar.answers["leaves"] = {"leaves": built.leaves[32:] + built.leaves[:32]}
        with pytest.raises(ContentError, match="do not match the Merkle root"):
            await fetch_leaves(a, c.node_id, manifest)
        liar.answers["chunk"] = {"chunk": data[:CHUNK], "proof": []}
        with pytest.raises(ChunkVerificationError, match=r"chunk 1 .*bad proof"):
            await fetch_chunk(a, c.node_id, manifest, 1)
        liar.answers["chunk"] = {"chunk": "text", "proof": None}
        with pytest.raises(ChunkVerificationError, match="malformed answer"):
            await fetch_chunk(a, c.node_id, manifest, 0)
        liar.answers["have"] = {"complete": "yes"}
        with pytest.raises(ContentError, match="malformed have"):
            await query_have(a, c.node_id, cid)


async def test_holders_are_found_through_the_dht(tmp_path: Path, plugins) -> None:
    cdn = plugins[0]
    async with open_network(data_root=tmp_path, plugins=plugins) as net:
        seed = await net.add_node(enable=["cdnish"])
        entry = f"{seed.node_id}@{seed.network.listen_addresses[0]}"
        nodes = []
        for _ in range(6):
            node = await net.add_node(enable=["cdnish"], settings={"network.bootstrap": [entry]})
            node.network.book = {seed.node_id: list(seed.network.listen_addresses)}
            nodes.append(node)
        with trio.fail_after(30):  # bootstrap lookups (real clock: the store uses threads)
            while not all(len(node.dht.table) >= 5 for node in nodes):  # noqa: ASYNC110
                await trio.sleep(0.05)
        data = os.urandom(2 * CHUNK)
        holders = nodes[:2]
        for node in holders:
            built = await cdn.stores[node].import_stream(_one(data), ME, chunk_size=CHUNK)
            await announce(node, built.content_id, meta={"complete": True})
        cid = built.content_id
        found = await find_holders(nodes[-1], cid)
        assert {p.contact.node_id for p in found} == {n.node_id for n in holders}
        assert all(p.info.meta == {"complete": True} for p in found)
        # the reader can fetch from whoever it found
        manifest = await fetch_manifest(nodes[-1], found[0].contact.node_id, cid)
        assert manifest == built.manifest
        # a holder does not list itself
        assert {p.contact.node_id for p in await find_holders(holders[0], cid)} == {
            holders[1].node_id
        }
        assert stop_announcing(holders[0], cid)
