"""`/zeone/content/1`: the request/response protocol for manifests, leaf hashes and chunks.

One request per item rather than one long stream: a client fetches different chunks from several
peers in parallel, a bad answer costs one chunk, and nothing has to be reassembled; concurrency
gives the pipelining a stream would. The cost is a frame per chunk, which is why chunks are capped
at 2 MiB (a chunk and its proof must fit in one 4 MiB frame).

Requests are CBOR maps ``{"op": ..., "cid": <32 bytes>, ...}``:

- ``manifest`` -> ``{"manifest": <canonical bytes>}``
- ``chunk`` + ``index`` -> ``{"chunk": <bytes>, "proof": [<32 bytes>...]}``
- ``leaves`` + ``start``, ``count`` (<= 65536) -> ``{"leaves": <count*32 bytes>}``
- ``have`` -> ``{"complete": bool, "held": <chunks held>}``

Errors are RemoteError ``bad-request`` or ``not-found``. The server is registered by a plugin
(`register_content_protocol`, from its `zeone_register_protocols` hook); when both the storage and
CDN plugins run on one node, the first registers the route and both stores are served.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any

import trio

from zeone.content.cid import ContentId
from zeone.content.errors import ChunkVerificationError, ContentError, ContentNotFound
from zeone.content.hashing import HASH_BYTES
from zeone.content.manifest import Manifest
from zeone.content.merkle import MerkleTree, split_leaves
from zeone.content.store import ContentStore
from zeone.content.verify import Fetch, verify_chunk_async
from zeone.rpc import RemoteError, Request

PROTOCOL = "/zeone/content/1"
MAX_LEAVES_PER_REQUEST = 65536
MAX_CONCURRENT_READS = 32
"""Chunk reads served at once (bounds the memory a flood of requests can pin: 32 x 2 MiB)."""
DEFAULT_TIMEOUT = 30.0


class ContentServer:
    """Answers `/zeone/content/1` from one or more stores (first store holding the id wins)."""

    def __init__(self) -> None:
        self.stores: list[ContentStore] = []
        self._reads = trio.Semaphore(MAX_CONCURRENT_READS)
        self.served_chunks = 0

    def add_store(self, store: ContentStore) -> None:
        if store not in self.stores:
            self.stores.append(store)

    async def _store_for(self, cid: ContentId) -> ContentStore:
        for store in self.stores:
            if await store.has_manifest(cid):
                return store
        raise RemoteError("not-found", f"content {cid} is not held here")

    async def handle(self, request: Request) -> dict[str, Any]:
        body = request.payload
        if not isinstance(body, dict) or type(body.get("op")) is not str:
            raise RemoteError("bad-request", "expected a map with an 'op'")
        try:
            cid = ContentId.from_bytes(body.get("cid"))
        except ContentError as exc:
            raise RemoteError("bad-request", str(exc)) from None
        op = body["op"]
        try:
            if op == "manifest":
                store = await self._store_for(cid)
                return {"manifest": await store.get_manifest_bytes(cid)}
            if op == "have":
                for store in self.stores:
                    if await store.has_manifest(cid):
                        missing = await store.missing_chunks(cid)
                        manifest = await store.get_manifest(cid)
                        held = manifest.chunk_count - len(missing)
                        return {"complete": not missing, "held": held}
                return {"complete": False, "held": 0}
            if op == "leaves":
                start, count = body.get("start"), body.get("count")
                if type(start) is not int or type(count) is not int:
                    raise RemoteError("bad-request", "'start' and 'count' must be integers")
                if not 0 <= count <= MAX_LEAVES_PER_REQUEST or start < 0:
                    raise RemoteError("bad-request", f"count must be 0..{MAX_LEAVES_PER_REQUEST}")
                store = await self._store_for(cid)
                leaves = await store.get_leaves(cid)
                return {"leaves": leaves[start * HASH_BYTES : (start + count) * HASH_BYTES]}
            if op == "chunk":
                index = body.get("index")
                if type(index) is not int:
                    raise RemoteError("bad-request", "'index' must be an integer")
                store = await self._store_for(cid)
                async with self._reads:
                    chunk, proof = await store.get_chunk_with_proof(cid, index)
                self.served_chunks += 1
                return {"chunk": chunk, "proof": proof}
        except ContentNotFound as exc:
            raise RemoteError("not-found", str(exc)) from None
        except ContentError as exc:
            raise RemoteError("bad-request", str(exc)) from None
        raise RemoteError("bad-request", f"unknown op {op[:40]!r}")


_servers: weakref.WeakKeyDictionary[Any, ContentServer] = weakref.WeakKeyDictionary()


def register_content_protocol(
    register: Callable[..., None], node: Any, store: ContentStore
) -> ContentServer:
    """Serve `store` over `/zeone/content/1` on `node`; call from `zeone_register_protocols`.

    Idempotent per node: a second plugin's call adds its store to the same server instead of
    registering the protocol twice.
    """
    server = _servers.get(node)
    if server is None:
        server = _servers[node] = ContentServer()
        register(PROTOCOL, server.handle)
    server.add_store(store)
    return server


# -- client ------------------------------------------------------------------------------------


async def _request(node: Any, peer: Any, body: dict[str, Any], timeout: float) -> dict[str, Any]:
    try:
        answer = await node.rpc.request(peer, PROTOCOL, body, timeout=timeout)
    except RemoteError as exc:
        if exc.code == "not-found":
            raise ContentNotFound(f"peer {peer}: {exc.message}") from None
        raise
    if not isinstance(answer, dict):
        raise ContentError(f"peer {peer} sent a malformed {body['op']} answer")
    return answer


async def fetch_manifest(
    node: Any, peer: Any, cid: ContentId, *, timeout: float = DEFAULT_TIMEOUT
) -> Manifest:
    """Fetch and fully check (hash == cid, canonical form, signature) a manifest from `peer`."""
    answer = await _request(node, peer, {"op": "manifest", "cid": cid.digest}, timeout)
    data = answer.get("manifest")
    if type(data) is not bytes:
        raise ContentError(f"peer {peer} sent no manifest bytes")
    try:
        return Manifest.decode(data, expected=cid)
    except ContentError as exc:
        raise ContentError(f"peer {peer} sent a bad manifest: {exc}") from None


async def request_chunk(
    node: Any, peer: Any, cid: ContentId, index: int, *, timeout: float = DEFAULT_TIMEOUT
) -> tuple[bytes, list[bytes]]:
    """Chunk `index` and its proof as `peer` sent them: NOT verified (see `fetch_chunk`)."""
    answer = await _request(node, peer, {"op": "chunk", "cid": cid.digest, "index": index}, timeout)
    chunk, proof = answer.get("chunk"), answer.get("proof")
    if type(chunk) is not bytes or type(proof) is not list:
        raise ChunkVerificationError(index, str(peer), "malformed answer")
    return chunk, proof


async def fetch_chunk(
    node: Any, peer: Any, manifest: Manifest, index: int, *, timeout: float = DEFAULT_TIMEOUT
) -> bytes:
    """Chunk `index` from `peer`, verified against `manifest` (ChunkVerificationError if not)."""
    chunk, proof = await request_chunk(node, peer, manifest.content_id, index, timeout=timeout)
    await verify_chunk_async(manifest, index, chunk, proof, source=str(peer))
    return chunk


def peer_fetch(
    node: Any, peer: Any, manifest: Manifest, *, timeout: float = DEFAULT_TIMEOUT
) -> Fetch:
    """A `Fetch` asking `peer`, for `stream_verified(..., source=str(peer))`."""
    cid = manifest.content_id

    async def fetch(index: int) -> tuple[bytes, list[bytes]]:
        return await request_chunk(node, peer, cid, index, timeout=timeout)

    return fetch


async def fetch_leaves(
    node: Any, peer: Any, manifest: Manifest, *, timeout: float = DEFAULT_TIMEOUT
) -> bytes:
    """All leaf hashes of `manifest` from `peer`, checked against its Merkle root.

    What a cache needs before `ContentStore.add_manifest` (32 bytes per chunk: 128 KiB for 1 GB).
    """
    cid = manifest.content_id
    parts = []
    for start in range(0, manifest.chunk_count, MAX_LEAVES_PER_REQUEST):
        count = min(MAX_LEAVES_PER_REQUEST, manifest.chunk_count - start)
        body = {"op": "leaves", "cid": cid.digest, "start": start, "count": count}
        answer = await _request(node, peer, body, timeout)
        part = answer.get("leaves")
        if type(part) is not bytes or len(part) != count * HASH_BYTES:
            raise ContentError(f"peer {peer} sent a malformed leaf list")
        parts.append(part)
    leaves = b"".join(parts)
    root = await trio.to_thread.run_sync(lambda: MerkleTree(split_leaves(leaves)).root)
    if root != manifest.root:
        raise ContentError(f"peer {peer} sent leaf hashes that do not match the Merkle root")
    return leaves


async def query_have(
    node: Any, peer: Any, cid: ContentId, *, timeout: float = DEFAULT_TIMEOUT
) -> tuple[bool, int]:
    """`(complete, chunks held)` of `cid` at `peer` (`(False, 0)` if it holds nothing)."""
    answer = await _request(node, peer, {"op": "have", "cid": cid.digest}, timeout)
    complete, held = answer.get("complete"), answer.get("held")
    if type(complete) is not bool or type(held) is not int:
        raise ContentError(f"peer {peer} sent a malformed have answer")
    return complete, held
