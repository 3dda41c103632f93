"""The storage node: holder side (`/zeone/storage/1`), publisher side (put, audits, repair) and
the downloader (get), around one `Storage` object per node.

Who does what:

- A *holder* stores fragments durably, answers fetches and audit challenges, and on `commit`
  keeps the file's manifest (as a `zeone.content` content) and announces itself as a provider
  with a bitmap of the fragment positions it holds.
- The *publisher* (the node that ran `put`) owns the current placement, audits its holders and
  repairs stripes: it is the node "responsible" for a file. Repairs stop while it is offline;
  the data stays readable from any k fragments per stripe.
- Any node can `get`: manifest from any provider, fragments from the placement plus the
  providers' bitmaps, fastest k per stripe, each checked against the manifest's roots.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import logging
import os
import random
import secrets
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import attrs
import trio

from zeone.content import (
    ContentError,
    ContentId,
    ContentStore,
    Manifest,
    announce,
    fetch_manifest,
    find_holders,
    peer_fetch,
    stream_verified,
)
from zeone.content.hashing import leaf_hash
from zeone.content.merkle import merkle_root
from zeone.identity import NodeId
from zeone.rpc import RemoteError, Request
from zeone_storage.codec import (
    KEY_BYTES,
    SALT_BYTES,
    Cipher,
    CodecError,
    StripeCodec,
    audit_tag,
    check_leaf,
    fragment_root,
    leaf_count,
)
from zeone_storage.config import StorageConfig
from zeone_storage.fragments import FragmentMismatch, FragmentStore, QuotaExceeded
from zeone_storage.ledger import Ledger
from zeone_storage.manifest import ManifestError, StorageManifest

log = logging.getLogger(__name__)

PROTOCOL = "/zeone/storage/1"
MEDIA_TYPE = "application/x-zeone-storage-manifest"
MAX_HAVE = 4096
MAX_BITMAP = 4000
"""Provider metadata is at most 4 KiB: a position bitmap fits files of up to 32 000 positions."""
KEEP_JOBS = 100


class StorageError(Exception):
    """A put or get failed; the message says why (shown to the user as is)."""


@attrs.frozen
class BadFragment:
    stripe: int
    index: int
    node: str
    reason: str

    def as_dict(self) -> dict[str, Any]:
        return attrs.asdict(self)


@attrs.define
class Job:
    """A put or get running in the node, polled by the CLI for its progress bar."""

    id: str
    kind: str
    total: int = 0
    done: int = 0
    state: str = "running"
    result: dict[str, Any] | None = None
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return attrs.asdict(self)


def file_key(identity: Any, salt: bytes) -> bytes:
    """The per-file key: a hash of the publisher's (deterministic Ed25519) signature over the salt.

    Only the publisher can derive it, it never has to be stored, and it differs per file; others
    read the file with the key given to them in the capability (`<id>.<key>`).
    """
    signature = identity.sign(b"zeone-storage-file-key-v1\0" + salt)
    return hashlib.sha256(b"zeone-storage-file-key\0" + signature).digest()


def capability(cid: ContentId, key: bytes | None) -> str:
    if key is None:
        return str(cid)
    return f"{cid}.{base64.b32encode(key).decode().rstrip('=').lower()}"


def parse_capability(text: str) -> tuple[ContentId, bytes | None]:
    """`<id>` or `<id>.<key>`; raises StorageError naming what is wrong."""
    text = text.strip()
    head, _, tail = text.partition(".")
    try:
        cid = ContentId.parse(head)
    except ContentError as exc:
        raise StorageError(f"bad file id: {exc}") from None
    if not tail:
        return cid, None
    try:
        key = base64.b32decode(tail.upper() + "=" * (-len(tail) % 8))
    except ValueError:
        raise StorageError("bad key in capability: not base32") from None
    if len(key) != KEY_BYTES:
        raise StorageError(f"bad key in capability: {len(key)} bytes, expected {KEY_BYTES}")
    return cid, key


def _bitmap(positions: list[int]) -> bytes:
    size = (max(positions) // 8 + 1) if positions else 0
    bits = bytearray(size)
    for p in positions:
        bits[p // 8] |= 1 << (p % 8)
    return bytes(bits)


def _from_bitmap(bits: bytes) -> list[int]:
    return [i * 8 + b for i, byte in enumerate(bits) for b in range(8) if byte >> b & 1]


def _content_leaves(data: bytes, chunk_size: int) -> list[bytes]:
    return [leaf_hash(data[i : i + chunk_size]) for i in range(0, len(data), chunk_size)]


@contextlib.contextmanager
def _single_error() -> Iterator[None]:
    """A StorageError from inside a nursery reaches the user as itself, not as a group."""
    try:
        yield
    except BaseExceptionGroup as group:
        match, _rest = group.split(StorageError)
        if match is None:
            raise
        first: BaseException = match
        while isinstance(first, BaseExceptionGroup):
            first = first.exceptions[0]
        raise first from None


class Storage:
    """Per-node state and logic; created by the plugin's hooks, run by `StorageService`."""

    def __init__(self, node: Any, config: StorageConfig) -> None:
        self.node = node
        self.config = config
        root = Path(node.config.data_dir) / "storage"
        root.mkdir(parents=True, exist_ok=True)
        self.fragments = FragmentStore(root, config.quota)
        self.content = ContentStore(root / "content")
        self.ledger = Ledger(root / "ledger.sqlite3")
        self.codecs: dict[tuple[int, int, str], StripeCodec] = {}
        self.manifests: dict[bytes, tuple[StorageManifest, bytes, bytes]] = {}
        self.jobs: dict[str, Job] = {}
        self.unreachable: dict[bytes, int] = {}
        self.cpu = trio.CapacityLimiter(max(2, os.cpu_count() or 2))
        """Coding and hashing threads: more than the cores buys nothing, and every extra thread
        can get its own malloc arena full of freed 1 MiB buffers (RSS creep)."""
        self._checking: set[tuple[bytes, int]] = set()
        self.repair_wanted = trio.Event()
        self.announcing = 0
        self._announced = trio.Event()
        """Provider announcements in flight (tests wait for them before stopping nodes)."""
        self.nursery: trio.Nursery | None = None
        self.stats = {"stored": 0, "served": 0, "audits_ok": 0, "audits_failed": 0,
                      "repaired": 0, "refused_full": 0, "bad_fragments": 0}  # fmt: skip

    def close(self) -> None:
        self.fragments.close()
        self.content.close()
        self.ledger.close()

    def codec(self, k: int, m: int, ec_type: str) -> StripeCodec:
        key = (k, m, ec_type)
        if key not in self.codecs:
            self.codecs[key] = StripeCodec(k, m, ec_type)
        return self.codecs[key]

    # -- holder side: /zeone/storage/1 ---------------------------------------------------------

    async def handle(self, request: Request) -> dict[str, Any]:
        body = request.payload
        if not isinstance(body, dict) or type(body.get("op")) is not str:
            raise RemoteError("bad-request", "expected a map with an 'op'")
        op = body["op"]
        if op == "store":
            root, data = body.get("root"), body.get("data")
            if type(root) is not bytes or len(root) != 32 or type(data) is not bytes or not data:
                raise RemoteError("bad-request", "store needs root (32 bytes) and data")
            try:
                await self.fragments.put(root, data)
            except FragmentMismatch as exc:
                raise RemoteError("bad-request", str(exc)) from None
            except QuotaExceeded as exc:
                self.stats["refused_full"] += 1
                raise RemoteError("full", str(exc)) from None
            self.stats["stored"] += 1
            return {"stored": True}
        if op == "fetch":
            root = body.get("root")
            if type(root) is not bytes or len(root) != 32:
                raise RemoteError("bad-request", "fetch needs root (32 bytes)")
            data = await self.fragments.get(root)
            if data is None:
                raise RemoteError("not-found", "fragment not held here")
            self.stats["served"] += 1
            return {"data": data}
        if op == "audit":
            root, index, nonce = body.get("root"), body.get("leaf"), body.get("nonce")
            if (
                type(root) is not bytes
                or len(root) != 32
                or type(index) is not int
                or type(nonce) is not bytes
                or not 16 <= len(nonce) <= 64
            ):
                raise RemoteError("bad-request", "audit needs root, leaf index and a 16-64 B nonce")
            try:
                answer = await self.fragments.audit_answer(root, index)
            except IndexError as exc:
                raise RemoteError("bad-request", str(exc)) from None
            if answer is None:
                raise RemoteError("not-found", "fragment not held here")
            leaf, proof = answer
            return {"leaf": leaf, "proof": proof, "tag": audit_tag(nonce, leaf)}
        if op == "have":
            roots = body.get("roots")
            if type(roots) is not list or len(roots) > MAX_HAVE:
                raise RemoteError("bad-request", f"have needs a list of at most {MAX_HAVE} roots")
            if any(type(r) is not bytes or len(r) != 32 for r in roots):
                raise RemoteError("bad-request", "roots are 32 bytes")
            return {"have": [await self.fragments.has(r) for r in roots]}
        if op == "commit":
            return await self._commit(request.peer, body)
        if op == "report":
            return await self._report(request.peer, body)
        raise RemoteError("bad-request", f"unknown op {op[:40]!r}")

    async def _commit(self, peer: Any, body: dict[str, Any]) -> dict[str, Any]:
        cm_bytes, sm_bytes, positions = body.get("cm"), body.get("sm"), body.get("positions")
        if (
            type(cm_bytes) is not bytes
            or type(sm_bytes) is not bytes
            or type(positions) is not list
        ):
            raise RemoteError("bad-request", "commit needs cm, sm and positions")
        try:
            cm = Manifest.decode(cm_bytes)
            sm = StorageManifest.decode(sm_bytes)
        except (ContentError, ManifestError) as exc:
            raise RemoteError("bad-request", f"refused manifest: {exc}") from None
        if cm.publisher != sm.publisher or cm.size != len(sm_bytes):
            raise RemoteError("bad-request", "content and storage manifests do not match")
        leaves = await trio.to_thread.run_sync(_content_leaves, sm_bytes, cm.chunk_size)
        if merkle_root(leaves) != cm.root:
            raise RemoteError("bad-request", "storage manifest does not match the content root")
        if not positions or any(type(p) is not int or not 0 <= p < sm.positions for p in positions):
            raise RemoteError("bad-request", "commit needs positions of fragments held here")
        held = {p: sm.root(p) for p in positions}
        for p, root in held.items():
            if not await self.fragments.has(root):
                raise RemoteError("not-found", f"fragment at position {p} is not held here")
        cid = cm.content_id
        await self._keep_manifest(cm, sm_bytes, leaves)
        await self.fragments.commit(cid.digest, held)
        everything = sorted(await self.fragments.holdings(cid.digest))
        if self.nursery is not None:
            self.nursery.start_soon(self._announce, cid, everything)
        return {"held": len(everything)}

    async def _keep_manifest(self, cm: Manifest, sm_bytes: bytes, leaves: list[bytes]) -> None:
        cid = cm.content_id
        if await self.content.has(cid):
            return
        await self.content.add_manifest(cm, b"".join(leaves), pinned=True)
        chunks = [
            (i, sm_bytes[i * cm.chunk_size : (i + 1) * cm.chunk_size])
            for i in range(cm.chunk_count)
        ]
        await self.content.put_chunks(cid, chunks)

    async def _announce(self, cid: ContentId, positions: list[int]) -> None:
        bits = _bitmap(positions)
        meta = {"p": bits} if len(bits) <= MAX_BITMAP else {}
        self.announcing += 1
        try:
            await announce(self.node, cid, meta=meta)
        except Exception as exc:  # the DHT may be empty or unreachable; republished later
            log.info("announcing %s failed: %s", cid, exc)
        finally:
            self.announcing -= 1
            if not self.announcing:
                self._announced.set()
                self._announced = trio.Event()

    async def wait_announced(self) -> None:
        """Return once no provider announcement is in flight (for orderly test shutdowns)."""
        if self.announcing:
            await self._announced.wait()

    async def _report(self, peer: Any, body: dict[str, Any]) -> dict[str, Any]:
        """A downloader says a fragment of one of our files was bad: re-audit it ourselves
        (a hostile report costs one audit, never a repair of a healthy fragment)."""
        cid, position = body.get("cid"), body.get("position")
        if type(cid) is not bytes or len(cid) != 32 or type(position) is not int:
            raise RemoteError("bad-request", "report needs cid and position")
        if not await trio.to_thread.run_sync(self.ledger.is_own, cid):
            raise RemoteError("not-found", "not a file published here")
        if self.nursery is not None and (cid, position) not in self._checking:
            self._checking.add((cid, position))  # a flood of reports costs one check each
            self.nursery.start_soon(self._check_position, cid, position)
        return {"ok": True}

    # -- client helpers --------------------------------------------------------------------------

    async def _rpc(self, peer: NodeId, body: dict[str, Any], timeout: float | None = None) -> Any:
        return await self.node.rpc.request(
            peer, PROTOCOL, body, timeout=timeout or self.config.request_timeout
        )

    async def fetch_fragment(self, peer: NodeId, root: bytes, size: int) -> bytes:
        """One verified fragment; raises StorageError(reason) naming what was wrong."""
        try:
            answer = await self._rpc(peer, {"op": "fetch", "root": root})
        except RemoteError as exc:
            raise StorageError("missing" if exc.code == "not-found" else exc.code) from None
        except (OSError, trio.TooSlowError, Exception) as exc:
            raise StorageError(f"unreachable ({type(exc).__name__})") from None
        data = answer.get("data") if isinstance(answer, dict) else None
        if type(data) is not bytes:
            raise StorageError("malformed answer")
        if len(data) != size:
            raise StorageError(f"truncated ({len(data)} of {size} bytes)")
        if await trio.to_thread.run_sync(fragment_root, data, limiter=self.cpu) != root:
            raise StorageError("corrupt (hash mismatch)")
        return data

    async def store_fragment(self, peer: NodeId, root: bytes, data: bytes) -> None:
        answer = await self._rpc(peer, {"op": "store", "root": root, "data": data})
        if not isinstance(answer, dict) or answer.get("stored") is not True:
            raise StorageError(f"{peer.short()} did not confirm the store")

    async def candidates(self, target: bytes) -> list[NodeId]:
        """Storage nodes near `target` from a DHT lookup plus the routing table and connections."""
        found: dict[bytes, NodeId] = {}
        try:
            for contact in await self.node.dht.find_node(NodeId(target[:20])):
                found[contact.node_id.raw] = contact.node_id
        except Exception as exc:
            log.info("lookup for placement failed: %s", exc)
        for contact in self.node.dht.table.closest(NodeId(target[:20]), 64):
            found[contact.node_id.raw] = contact.node_id
        for peer in list(self.node.network.connections):
            found[peer.raw] = peer
        found.pop(self.node.node_id.raw, None)
        return list(found.values())

    def _rank(self, pool: list[NodeId], key: bytes, exclude: set[bytes]) -> list[NodeId]:
        target = int.from_bytes(key[:20], "big")
        usable = [
            p
            for p in pool
            if p.raw not in exclude and self.ledger.score(p.raw) >= self.config.min_score
        ]
        return sorted(usable, key=lambda p: p.int ^ target)

    async def place_fragment(
        self, pool: list[NodeId], root: bytes, data: bytes, exclude: set[bytes], avoid: set[bytes]
    ) -> NodeId:
        """Store on the closest acceptable node to the fragment's key, falling back to the next
        on refusal (quota, no plugin) or failure; `exclude` is reserved synchronously."""
        tried: list[str] = []
        while True:
            ranked = self._rank(pool, root, exclude | avoid)
            if not ranked:
                raise StorageError(
                    "not enough storage nodes: need a distinct node for every fragment of a "
                    f"stripe (tried {len(tried)}: {'; '.join(tried[-4:]) or 'none known'})"
                )
            peer = ranked[0]
            exclude.add(peer.raw)
            try:
                await self.store_fragment(peer, root, data)
                return peer
            except (RemoteError, StorageError, OSError, trio.TooSlowError, Exception) as exc:
                exclude.discard(peer.raw)
                avoid.add(peer.raw)
                tried.append(f"{peer.short()}: {exc}")

    # -- put -------------------------------------------------------------------------------

    async def put(
        self,
        path: Path,
        *,
        encrypt: bool | None = None,
        name: str | None = None,
        progress: Callable[[int], None] = lambda _n: None,
    ) -> dict[str, Any]:
        """Stripe, encode, place and commit `path`; returns once every fragment is durable."""
        cfg = self.config
        encrypt = cfg.encrypt if encrypt is None else encrypt
        try:
            size = (await trio.to_thread.run_sync(os.stat, path)).st_size
        except OSError as exc:
            raise StorageError(f"cannot read {path}: {exc.strerror}") from None
        if not await trio.to_thread.run_sync(Path(path).is_file):
            raise StorageError(f"{path} is not a regular file")
        if size == 0:
            raise StorageError(f"{path} is empty")
        codec = self.codec(cfg.k, cfg.m, cfg.ec_type)
        salt = secrets.token_bytes(SALT_BYTES) if encrypt else None
        key = file_key(self.node.identity, salt) if salt is not None else None
        cipher = Cipher(key, salt) if key is not None and salt is not None else None
        stripes = -(-size // cfg.stripe_size)
        pool = await self.candidates(hashlib.sha256(os.urandom(16)).digest())
        if len(pool) < codec.n:
            pool = await self.candidates(self.node.node_id.raw)
        if len(pool) < codec.n:
            raise StorageError(
                f"not enough storage nodes: {codec.k}+{codec.m} fragments per stripe need "
                f"{codec.n} other nodes, {len(pool)} known"
            )
        roots: list[bytes] = [b""] * (stripes * codec.n)
        placement: dict[int, bytes] = {}
        sizes: dict[int, int] = {}
        avoid: set[bytes] = set()
        started = time.monotonic()
        wire = 0

        def encode(stripe: int, fd: int) -> tuple[list[bytes], list[bytes]]:
            length = min(cfg.stripe_size, size - stripe * cfg.stripe_size)
            data = os.pread(fd, length, stripe * cfg.stripe_size)
            if len(data) != length:
                raise StorageError(f"{path} changed while reading (short read)")
            if cipher is not None:
                data = cipher.encrypt(stripe, data)
            encoded = codec.encode_stripe(data)
            return encoded.fragments, encoded.roots

        async def one_stripe(stripe: int, fd: int) -> None:
            nonlocal wire
            fragments, fragment_roots = await trio.to_thread.run_sync(
                encode, stripe, fd, limiter=self.cpu
            )
            sizes[stripe] = len(fragments[0])
            used: set[bytes] = set()

            async def send(index: int) -> None:
                nonlocal wire
                position = stripe * codec.n + index
                peer = await self.place_fragment(
                    pool, fragment_roots[index], fragments[index], used, avoid
                )
                roots[position] = fragment_roots[index]
                placement[position] = peer.raw
                wire += len(fragments[index])

            async with trio.open_nursery() as nursery:
                for index in range(codec.n):
                    nursery.start_soon(send, index)
            progress(min(cfg.stripe_size, size - stripe * cfg.stripe_size))

        fd = os.open(path, os.O_RDONLY)
        try:
            slots = trio.Semaphore(cfg.parallel_stripes)  # bounded memory: stripes in flight

            async def bounded(stripe: int) -> None:
                try:
                    await one_stripe(stripe, fd)
                finally:
                    slots.release()

            with _single_error():
                async with trio.open_nursery() as nursery:
                    for stripe in range(stripes):
                        await slots.acquire()
                        nursery.start_soon(bounded, stripe)
        finally:
            os.close(fd)

        nodes = sorted(set(placement.values()))
        index_of = {node: i for i, node in enumerate(nodes)}
        manifest = StorageManifest(
            name=(name or Path(path).name)[:255], size=size,
            media_type="application/octet-stream", stripe_size=cfg.stripe_size, k=codec.k,
            m=codec.m, ec_type=codec.ec_type, fragment_size=sizes[0],
            last_fragment_size=sizes[stripes - 1], roots=b"".join(roots), nodes=tuple(nodes),
            place=b"".join(index_of[placement[p]].to_bytes(2, "big") for p in range(len(roots))),
            salt=salt, publisher=self.node.identity.public_key,
        ).sign(self.node.identity)  # fmt: skip
        sm_bytes = manifest.encode()

        async def one_shot() -> Any:
            yield sm_bytes

        built = await self.content.import_stream(
            one_shot(), self.node.identity, pinned=True, media_type=MEDIA_TYPE, name=manifest.name
        )
        cid = built.content_id
        cm_bytes = built.manifest.encode()
        by_node: dict[bytes, list[int]] = {}
        for position, node in placement.items():
            by_node.setdefault(node, []).append(position)
        lost: list[int] = []

        async def commit(node: bytes, positions: list[int]) -> None:
            nonlocal wire
            body = {"op": "commit", "cm": cm_bytes, "sm": sm_bytes, "positions": positions}
            for attempt in range(2):
                try:
                    await self._rpc(NodeId(node), body)
                    wire += len(sm_bytes)
                    return
                except Exception as exc:
                    log.info("commit to %s failed (attempt %d): %s", node.hex()[:8], attempt, exc)
            lost.extend(positions)

        async with trio.open_nursery() as nursery:
            for node, positions in by_node.items():
                nursery.start_soon(commit, node, positions)
        await trio.to_thread.run_sync(self.ledger.add_file, cid.digest, manifest, placement)
        for position in lost:
            await trio.to_thread.run_sync(self.ledger.mark_lost, cid.digest, position)
        self.manifests[cid.digest] = (manifest, sm_bytes, cm_bytes)
        if self.nursery is not None:
            self.nursery.start_soon(self._announce, cid, [])
        if lost:
            self.repair_wanted.set()
        return {
            "id": capability(cid, key),
            "cid": str(cid),
            "name": manifest.name,
            "size": size,
            "stripes": stripes,
            "k": codec.k,
            "m": codec.m,
            "nodes": len(nodes),
            "encrypted": key is not None,
            "uncommitted": len(lost),
            "bytes_sent": wire,
            "seconds": round(time.monotonic() - started, 3),
        }

    # -- manifests and holders --------------------------------------------------------------

    async def load_manifest(self, cid: ContentId) -> tuple[StorageManifest, bytes, bytes]:
        """The storage manifest of `cid`, from memory, the local store or any provider."""
        if cid.digest in self.manifests:
            return self.manifests[cid.digest]
        if await self.content.has(cid):
            cm = await self.content.get_manifest(cid)
            sm_bytes = b"".join([part async for part in self.content.read(cid)])
        else:
            cm, sm_bytes = await self._fetch_manifest(cid)
        if cm.media_type != MEDIA_TYPE:
            raise StorageError(f"{cid} is not a stored file (media type {cm.media_type})")
        try:
            sm = StorageManifest.decode(sm_bytes)
        except ManifestError as exc:
            raise StorageError(f"refused the manifest of {cid}: {exc}") from None
        if sm.publisher != cm.publisher:
            raise StorageError(f"{cid}: the storage manifest is signed by another publisher")
        entry = (sm, sm_bytes, cm.encode())
        self.manifests[cid.digest] = entry
        return entry

    async def _fetch_manifest(self, cid: ContentId) -> tuple[Manifest, bytes]:
        providers = await find_holders(self.node, cid, count=32)
        errors = []
        for provider in providers:
            peer = provider.contact.node_id
            try:
                with trio.fail_after(self.config.request_timeout):
                    cm = await fetch_manifest(self.node, peer, cid)
                    if cm.size > 4 * 1024 * 1024:
                        raise StorageError("manifest content is too large")
                    parts = [
                        part
                        async for part in stream_verified(
                            cm, peer_fetch(self.node, peer, cm), source=str(peer), parallel=4
                        )
                    ]
                return cm, b"".join(parts)
            except Exception as exc:
                errors.append(f"{peer.short()}: {exc}")
        raise StorageError(
            f"no provider served the manifest of {cid}"
            + (f" ({'; '.join(errors[:4])})" if errors else " (no provider found in the DHT)")
        )

    async def locate(self, cid: ContentId, sm: StorageManifest) -> dict[int, list[NodeId]]:
        """Known holders per position: our ledger for our files, else manifest + providers."""
        placement = await trio.to_thread.run_sync(self.ledger.placement, cid.digest)
        holders: dict[int, list[NodeId]] = {p: [] for p in range(sm.positions)}
        if placement:
            for position, (node, alive) in placement.items():
                if alive:
                    holders[position].append(NodeId(node))
            return holders
        for position in range(sm.positions):
            holders[position].append(sm.holder(position))
        try:
            providers = await find_holders(self.node, cid, count=100)
        except Exception as exc:
            log.info("provider lookup for %s failed: %s", cid, exc)
            providers = []
        for provider in providers:
            bits = provider.info.meta.get("p") if isinstance(provider.info.meta, dict) else None
            if type(bits) is not bytes:
                continue
            for position in _from_bitmap(bits):
                peer = provider.contact.node_id
                if position < sm.positions and peer not in holders[position]:
                    holders[position].append(peer)
        if await self.fragments.holdings(cid.digest):  # we hold some ourselves
            for position in await self.fragments.holdings(cid.digest):
                if self.node.node_id in holders[position]:
                    holders[position].remove(self.node.node_id)
                holders[position].insert(0, self.node.node_id)
        return holders

    async def _fetch_local_or_remote(self, peer: NodeId, root: bytes, size: int) -> bytes:
        if peer == self.node.node_id:
            data = await self.fragments.get(root)
            if data is None or len(data) != size:
                raise StorageError("missing")
            return data
        return await self.fetch_fragment(peer, root, size)

    async def fetch_stripe_fragments(
        self,
        sm: StorageManifest,
        stripe: int,
        holders: dict[int, list[NodeId]],
        bad: list[BadFragment],
        need: int | None = None,
    ) -> dict[int, bytes]:
        """The first `need` (default k) verified fragments of `stripe`, asked in parallel.

        k requests start at once (data fragments first: decoding is cheapest, best-standing
        holders first); a failure starts the next candidate and a slow stripe gets one more
        request every `hedge_after` seconds.
        """
        need = need or sm.k
        size = sm.fragment_length(stripe)
        queue: list[tuple[int, NodeId]] = []
        for index in range(sm.n):
            position = stripe * sm.n + index
            for peer in holders.get(position, []):
                queue.append((index, peer))
        queue.sort(key=lambda c: (c[0] >= sm.k, -self.ledger.score(c[1].raw)))
        got: dict[int, bytes] = {}
        asked: set[int] = set()
        in_flight = 0

        async with trio.open_nursery() as nursery:

            def launch() -> None:
                nonlocal in_flight
                # a distinct fragment index first; the same index again only as a fallback
                pick = next(
                    (i for i, (x, _) in enumerate(queue) if x not in got and x not in asked), -1
                )
                if pick < 0:
                    pick = next((i for i, (x, _) in enumerate(queue) if x not in got), -1)
                if pick >= 0:
                    index, peer = queue.pop(pick)
                    asked.add(index)
                    in_flight += 1
                    nursery.start_soon(one, index, peer)
                    return
                if in_flight == 0:
                    nursery.cancel_scope.cancel()

            async def one(index: int, peer: NodeId) -> None:
                nonlocal in_flight
                position = stripe * sm.n + index
                try:
                    data = await self._fetch_local_or_remote(peer, sm.root(position), size)
                except StorageError as exc:
                    in_flight -= 1
                    bad.append(BadFragment(stripe, index, str(peer), str(exc)))
                    launch()
                    return
                in_flight -= 1
                got.setdefault(index, data)
                if len(got) >= need:
                    nursery.cancel_scope.cancel()

            async def hedge() -> None:
                while True:
                    await trio.sleep(self.config.hedge_after)
                    launch()

            for _ in range(need):
                launch()
            nursery.start_soon(hedge)
        if len(got) < need:
            raise StorageError(
                f"stripe {stripe}: only {len(got)} of the {need} fragments needed could be "
                f"fetched ({'; '.join(f'{b.index}@{b.node[:8]}: {b.reason}' for b in bad[-6:])})"
            )
        return got

    # -- get -------------------------------------------------------------------------------

    async def get(
        self,
        id_text: str,
        output: Path,
        *,
        progress: Callable[[int], None] = lambda _n: None,
        on_size: Callable[[int], None] = lambda _n: None,
    ) -> dict[str, Any]:
        """Fetch, verify, decode (and decrypt) a file into `output` (temp file, fsync, rename)."""
        cid, key = parse_capability(id_text)
        sm, _sm_bytes, _cm = await self.load_manifest(cid)
        on_size(sm.size)
        cipher = None
        if sm.salt is not None:
            if key is None and sm.publisher == self.node.identity.public_key:
                key = file_key(self.node.identity, sm.salt)
            if key is None:
                raise StorageError(f"{cid} is encrypted: pass the capability <id>.<key>")
            cipher = Cipher(key, sm.salt)
        codec = self.codec(sm.k, sm.m, sm.ec_type)
        holders = await self.locate(cid, sm)
        bad: list[BadFragment] = []
        started = time.monotonic()
        wire = 0
        output = Path(output)
        tmp = output.with_name(f".{output.name}.{secrets.token_hex(4)}.part")

        def decode(stripe: int, fragments: dict[int, bytes]) -> bytes:
            data = codec.decode(list(fragments.values()))
            if cipher is not None:
                data = cipher.decrypt(stripe, data)
            if len(data) != sm.stripe_length(stripe):
                raise CodecError(f"stripe {stripe} decoded to {len(data)} bytes")
            return data

        fd = await trio.to_thread.run_sync(
            lambda: os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        )
        try:
            slots = trio.Semaphore(self.config.parallel_stripes)

            async def one_stripe(stripe: int) -> None:
                nonlocal wire
                try:
                    fragments = await self.fetch_stripe_fragments(sm, stripe, holders, bad)
                    wire += sum(len(f) for f in fragments.values())
                    try:
                        data = await trio.to_thread.run_sync(
                            decode, stripe, fragments, limiter=self.cpu
                        )
                    except CodecError as exc:
                        raise StorageError(str(exc)) from None
                    await trio.to_thread.run_sync(os.pwrite, fd, data, stripe * sm.stripe_size)
                    progress(len(data))
                finally:
                    slots.release()

            async with trio.open_nursery() as nursery:
                for stripe in range(sm.stripes):
                    await slots.acquire()
                    nursery.start_soon(one_stripe, stripe)
            await trio.to_thread.run_sync(os.fsync, fd)
        except BaseException:
            os.close(fd)
            tmp.unlink(missing_ok=True)
            raise
        os.close(fd)
        await trio.to_thread.run_sync(os.replace, tmp, output)
        reported = [b for b in bad if not b.reason.startswith("unreachable")]
        self.stats["bad_fragments"] += len(reported)
        await self._handle_bad(cid, sm, bad)
        return {
            "id": str(cid),
            "name": sm.name,
            "output": str(output),
            "size": sm.size,
            "bytes_received": wire,
            "seconds": round(time.monotonic() - started, 3),
            "bad_fragments": [b.as_dict() for b in bad],
        }

    async def _handle_bad(
        self, cid: ContentId, sm: StorageManifest, bad: list[BadFragment]
    ) -> None:
        """Blame and repair: our own file is re-checked here; otherwise the publisher is told."""
        if not bad:
            return
        for fragment in bad:
            log.warning(
                "fragment %d of stripe %d of %s at %s: %s",
                fragment.index, fragment.stripe, cid, fragment.node[:8], fragment.reason,
            )  # fmt: skip
        own = sm.publisher == self.node.identity.public_key
        for fragment in bad:
            position = fragment.stripe * sm.n + fragment.index
            if own:
                if self.nursery is not None:
                    self.nursery.start_soon(self._check_position, cid.digest, position)
                continue
            try:
                with trio.move_on_after(5):
                    await self._rpc(
                        sm.publisher_id,
                        {"op": "report", "cid": cid.digest, "position": position},
                        timeout=5,
                    )
            except Exception as exc:
                log.info("could not report a bad fragment to the publisher: %s", exc)

    # -- audits and repair ------------------------------------------------------------------

    async def audit(self, peer: NodeId, sm: StorageManifest, position: int) -> str:
        """Challenge `peer` for a random leaf of the fragment at `position`: "ok", "failed"
        (wrong or missing data: the node dropped it) or "unreachable"."""
        stripe = position // sm.n
        size = sm.fragment_length(stripe)
        index = random.randrange(leaf_count(size))
        nonce = secrets.token_bytes(16)
        root = sm.root(position)
        try:
            answer = await self._rpc(
                peer, {"op": "audit", "root": root, "leaf": index, "nonce": nonce}
            )
        except RemoteError:
            return "failed"
        except Exception:
            return "unreachable"
        if not isinstance(answer, dict):
            return "failed"
        leaf, proof, tag = answer.get("leaf"), answer.get("proof"), answer.get("tag")
        if type(leaf) is not bytes or type(proof) is not list or type(tag) is not bytes:
            return "failed"
        if any(type(p) is not bytes for p in proof):
            return "failed"
        if tag != audit_tag(nonce, leaf) or not check_leaf(root, size, index, leaf, proof):
            return "failed"
        return "ok"

    async def _record(self, peer: bytes, outcome: str) -> None:
        passed = outcome == "ok"
        self.stats["audits_ok" if passed else "audits_failed"] += 1
        await trio.to_thread.run_sync(self.ledger.record_audit, peer, passed)

    async def _check_position(self, cid: bytes, position: int) -> None:
        """Check one position in full now (after a report); mark it lost and repair if bad."""
        try:
            await self._check_position_once(cid, position)
        finally:
            self._checking.discard((cid, position))

    async def _check_position_once(self, cid: bytes, position: int) -> None:
        sm, _, _ = await self.load_manifest(ContentId(cid))
        placement = await trio.to_thread.run_sync(self.ledger.placement, cid)
        if position not in placement or not placement[position][1]:
            return
        node = placement[position][0]
        # A report names one fragment: check all of it, not a sampled leaf.
        try:
            await self.fetch_fragment(
                NodeId(node), sm.root(position), sm.fragment_length(position // sm.n)
            )
            outcome = "ok"
        except StorageError as exc:
            outcome = "unreachable" if str(exc).startswith("unreachable") else "failed"
        await self._record(node, outcome)
        if outcome != "ok":
            await trio.to_thread.run_sync(self.ledger.mark_lost, cid, position)
            self.repair_wanted.set()

    async def audit_round(self) -> dict[str, int]:
        """One audit of every holder of every file we published: one random fragment each."""
        counts = {"ok": 0, "failed": 0, "unreachable": 0, "lost": 0}
        for info in await trio.to_thread.run_sync(self.ledger.files):
            cid = info["cid"]
            try:
                sm, _, _ = await self.load_manifest(ContentId(cid))
            except StorageError as exc:
                log.warning("cannot audit %s: %s", ContentId(cid), exc)
                continue
            placement = await trio.to_thread.run_sync(self.ledger.placement, cid)
            by_node: dict[bytes, list[int]] = {}
            for position, (node, alive) in placement.items():
                if alive:
                    by_node.setdefault(node, []).append(position)

            async def check(
                node: bytes, positions: list[int], sm: StorageManifest, cid: bytes
            ) -> None:
                position = random.choice(positions)
                outcome = await self.audit(NodeId(node), sm, position)
                counts[outcome] += 1
                await self._record(node, outcome)
                lost: list[int] = []
                if outcome == "ok":
                    self.unreachable.pop(node, None)
                elif outcome == "failed":
                    lost = [position, *await self._missing_at(node, sm, positions)]
                else:
                    self.unreachable[node] = self.unreachable.get(node, 0) + 1
                    if self.unreachable[node] >= self.config.audit_failures:
                        lost = positions
                for p in sorted(set(lost)):
                    await trio.to_thread.run_sync(self.ledger.mark_lost, cid, p)
                counts["lost"] += len(set(lost))

            async with trio.open_nursery() as nursery:
                for node, positions in by_node.items():
                    nursery.start_soon(check, node, positions, sm, cid)
        if counts["lost"]:
            self.repair_wanted.set()
        return counts

    async def _missing_at(
        self, node: bytes, sm: StorageManifest, positions: list[int]
    ) -> list[int]:
        """Positions `node` no longer has, by a `have` query (after it failed an audit)."""
        missing = []
        for start in range(0, len(positions), MAX_HAVE):
            part = positions[start : start + MAX_HAVE]
            try:
                answer = await self._rpc(
                    NodeId(node), {"op": "have", "roots": [sm.root(p) for p in part]}
                )
                have = answer.get("have") if isinstance(answer, dict) else None
                if type(have) is not list or len(have) != len(part):
                    return positions
            except Exception:
                return positions
            missing.extend(p for p, held in zip(part, have, strict=True) if held is not True)
        return missing

    async def repair_all(self) -> dict[str, int]:
        """Regenerate lost fragments of every stripe at or below the repair threshold."""
        totals = {"stripes": 0, "fragments": 0, "unrecoverable": 0}
        for info in await trio.to_thread.run_sync(self.ledger.files):
            result = await self.repair_file(ContentId(info["cid"]))
            for key in totals:
                totals[key] += result[key]
        return totals

    async def repair_file(self, cid: ContentId) -> dict[str, int]:
        sm, sm_bytes, cm_bytes = await self.load_manifest(cid)
        codec = self.codec(sm.k, sm.m, sm.ec_type)
        result = {"stripes": 0, "fragments": 0, "unrecoverable": 0}
        placement = await trio.to_thread.run_sync(self.ledger.placement, cid.digest)
        pool: list[NodeId] | None = None
        for stripe in range(sm.stripes):
            alive = {
                i: NodeId(placement[stripe * sm.n + i][0])
                for i in range(sm.n)
                if placement.get(stripe * sm.n + i, (b"", False))[1]
            }
            if len(alive) > self.config.repair_threshold:
                continue
            if len(alive) < sm.k:
                result["unrecoverable"] += 1
                log.error("stripe %d of %s has %d fragments left: lost", stripe, cid, len(alive))
                continue
            if pool is None:
                pool = await self.candidates(cid.digest)
            holders = {stripe * sm.n + i: [peer] for i, peer in alive.items()}
            bad: list[BadFragment] = []
            try:
                fragments = await self.fetch_stripe_fragments(sm, stripe, holders, bad)
            except StorageError as exc:
                log.warning("repair of stripe %d of %s: %s", stripe, cid, exc)
                for b in bad:
                    await trio.to_thread.run_sync(
                        self.ledger.mark_lost, cid.digest, stripe * sm.n + b.index
                    )
                continue
            missing = [i for i in range(sm.n) if i not in alive]
            try:
                rebuilt = await trio.to_thread.run_sync(
                    codec.reconstruct, list(fragments.values()), missing, limiter=self.cpu
                )
            except CodecError as exc:
                log.error("repair of stripe %d of %s: %s", stripe, cid, exc)
                continue
            exclude = {peer.raw for peer in alive.values()}
            # the nodes that lost these fragments get them back only if no one else can
            failed = {
                placement[stripe * sm.n + i][0] for i in missing if stripe * sm.n + i in placement
            }
            for index, data in zip(missing, rebuilt, strict=True):
                position = stripe * sm.n + index
                root = sm.root(position)
                if await trio.to_thread.run_sync(fragment_root, data, limiter=self.cpu) != root:
                    log.error("rebuilt fragment %d of stripe %d does not match", index, stripe)
                    continue
                try:
                    previous = placement.get(position, (b"", False))[0]
                    for avoid in (set(failed), {previous}, set()):
                        try:
                            peer = await self.place_fragment(pool, root, data, exclude, avoid)
                            break
                        except StorageError:
                            if not avoid:
                                raise
                    await self._rpc(
                        peer,
                        {"op": "commit", "cm": cm_bytes, "sm": sm_bytes, "positions": [position]},
                    )
                except Exception as exc:
                    log.warning("could not place a rebuilt fragment: %s", exc)
                    continue
                await trio.to_thread.run_sync(
                    self.ledger.set_holder, cid.digest, position, peer.raw, True
                )
                result["fragments"] += 1
                self.stats["repaired"] += 1
            result["stripes"] += 1
        return result

    async def health(self, cid: ContentId) -> dict[str, Any]:
        """Fragments confirmed alive per stripe, by asking every known holder now."""
        sm, _, _ = await self.load_manifest(cid)
        holders = await self.locate(cid, sm)
        by_node: dict[NodeId, list[int]] = {}
        for position, peers in holders.items():
            for peer in peers:
                by_node.setdefault(peer, []).append(position)
        alive: set[int] = set()
        unreachable: list[str] = []

        async def ask(peer: NodeId, positions: list[int]) -> None:
            if peer == self.node.node_id:
                for p in positions:
                    if await self.fragments.has(sm.root(p)):
                        alive.add(p)
                return
            missing = await self._missing_at(peer.raw, sm, positions)
            if len(missing) == len(positions):
                unreachable.append(str(peer))
            alive.update(set(positions) - set(missing))

        async with trio.open_nursery() as nursery:
            for peer, positions in by_node.items():
                nursery.start_soon(ask, peer, positions)
        per_stripe = [
            sum(1 for i in range(sm.n) if stripe * sm.n + i in alive)
            for stripe in range(sm.stripes)
        ]
        worst = min(per_stripe) if per_stripe else 0
        state = "healthy" if worst == sm.n else "degraded" if worst >= sm.k else "lost"
        return {
            "id": str(cid), "name": sm.name, "size": sm.size, "k": sm.k, "m": sm.m,
            "stripes": sm.stripes, "alive_per_stripe": per_stripe, "min_alive": worst,
            "state": state, "repair_threshold": self.config.repair_threshold,
            "holders": len(by_node), "silent_holders": sorted(unreachable),
            "encrypted": sm.encrypted, "publisher": str(sm.publisher_id),
        }  # fmt: skip

    # -- jobs ---------------------------------------------------------------------------------

    def start_job(self, kind: str, work: Callable[[Job], Any]) -> Job:
        if self.nursery is None:
            raise StorageError("the storage service is not running")
        job = Job(id=secrets.token_hex(8), kind=kind)
        self.jobs[job.id] = job
        while len(self.jobs) > KEEP_JOBS:
            oldest = next(iter(self.jobs))
            if self.jobs[oldest].state == "running":
                break
            del self.jobs[oldest]

        async def run() -> None:
            try:
                job.result = await work(job)
                job.state = "done"
            except StorageError as exc:
                job.state, job.error = "failed", str(exc)
            except Exception as exc:
                log.exception("storage %s job failed", kind)
                job.state, job.error = "failed", f"{type(exc).__name__}: {exc}"

        self.nursery.start_soon(run)
        return job


@attrs.define(eq=False)
class StorageService:
    """Runs jobs, the audit loop, repairs and the collection of abandoned uploads."""

    storage: Storage
    name: str = "storage"

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        storage = self.storage
        try:
            async with trio.open_nursery() as nursery:
                storage.nursery = nursery
                nursery.start_soon(self._audits)
                nursery.start_soon(self._repairs)
                task_status.started()
        finally:
            storage.nursery = None

    async def _audits(self) -> None:
        storage = self.storage
        interval = storage.config.audit_interval
        while True:
            await trio.sleep(interval if interval > 0 else 3600)
            await storage.fragments.collect_uncommitted(storage.config.pending_ttl)
            if interval > 0:
                try:
                    counts = await storage.audit_round()
                    log.info("audit round: %s", counts)
                except Exception:
                    log.exception("audit round failed")

    async def _repairs(self) -> None:
        storage = self.storage
        while True:
            await storage.repair_wanted.wait()
            storage.repair_wanted = trio.Event()
            try:
                totals = await storage.repair_all()
                log.info("repair: %s", totals)
            except Exception:
                log.exception("repair failed")
