"""A test-only plugin: a lying holder of content for the CDN's bad-peer tests.

It serves `/zeone/content/1` from its own store like an honest node, except that, depending on
`MODE[node]`, it corrupts chunks (all, or from some index on) or the manifest's signature, or
refuses each chunk once ("flaky", an honest but overloaded holder).
"""

from __future__ import annotations

from typing import Any

from zeone import PluginInfo, hookimpl
from zeone.content import ContentServer, ContentStore
from zeone.rpc import RemoteError, Request

MODE: dict[Any, tuple[str, int]] = {}
STORES: dict[Any, ContentStore] = {}


@hookimpl
def zeone_plugin_info() -> PluginInfo:
    return PluginInfo(name="evilcdn", version="0", api="1.0")


@hookimpl
def zeone_register_protocols(register: Any, node: Any) -> None:
    store = STORES[node] = ContentStore(node.config.data_dir / "evil")
    server = ContentServer()
    server.add_store(store)

    refused: set[int] = set()

    async def handle(request: Request) -> Any:
        mode, start = MODE.get(node, ("honest", 0))
        op = request.payload.get("op")
        if mode == "flaky" and op == "chunk" and request.payload["index"] not in refused:
            refused.add(request.payload["index"])  # every chunk fails once, then is served
            raise RemoteError("busy", "try again")
        answer = await server.handle(request)
        if mode == "bad-chunk" and op == "chunk" and request.payload["index"] >= start:
            chunk = bytearray(answer["chunk"])
            chunk[len(chunk) // 2] ^= 0x01
            answer = {**answer, "chunk": bytes(chunk)}
        if mode == "bad-signature" and op == "manifest":
            data = bytearray(answer["manifest"])
            data[-5] ^= 0x01  # inside the signature (the map's last value)
            answer = {"manifest": bytes(data)}
        return answer

    register("/zeone/content/1", handle)


async def copy_content(node: Any, source: ContentStore, cid: Any) -> None:
    """Give the lying node a true copy of `cid` (it lies in what it sends, not what it has)."""
    store = STORES[node]
    manifest = await source.get_manifest(cid)
    await store.add_manifest(manifest, await source.get_leaves(cid))
    chunks = [(i, await source.get_chunk(cid, i)) for i in range(manifest.chunk_count)]
    await store.put_chunks(cid, chunks)
