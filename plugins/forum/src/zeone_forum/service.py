"""The forum's per-node runtime: the store, the `/zeone/forum/1` protocol, and the tasks that
replicate (push, pull, reconcile, re-replicate) and enforce the storage policy.

Replication in three layers, cheapest first:

- **push**: every record this node accepts is pushed at once to connected forum peers (except
  the one it came from); they accept or drop it as a duplicate before any signature check.
- **incremental pull**: per peer a watermark (the peer's local sequence number and its store
  epoch) fetches what the peer applied since last time, so a node that was away catches up.
- **reconciliation**: range-based set reconciliation (`reconcile.py`) finds the differences of
  two stores that share most records in a few round trips, whatever the watermarks say.

Holders announce themselves in `forumh:<thread id>` DHT records (score and role in the value).
The maintenance loop counts them; a thread with fewer holders than its target (the replication
factor, 10 for popular threads) is pushed to peers that do not hold it, at once when a peer
disconnects (emergency re-replication) and periodically otherwise.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import random
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs
import trio

from zeone.dht import InvalidRecord, Namespace
from zeone.errors import ZeoneError
from zeone.identity import NodeId
from zeone.rpc import RemoteError, Request
from zeone.wire.frame import decode_cbor, encode_cbor
from zeone_forum import popularity, ring
from zeone_forum.config import ForumConfig
from zeone_forum.reconcile import ReconcileError, SyncIndex, initiate, process
from zeone_forum.records import (
    EditBody,
    ForumRecord,
    InvalidForumRecord,
    PostBody,
    ProfileBody,
    ThreadBody,
    TombstoneBody,
    VoteBody,
)
from zeone_forum.store import ACCEPTED, ForumStore, Ingest

if TYPE_CHECKING:
    from zeone.node import Node

log = logging.getLogger(__name__)

PROTOCOL = "/zeone/forum/1"
META_NS = b"forum"
HOLDER_NS = b"forumh"
MAX_BATCH = 512
MAX_REPLY_BYTES = 1024 * 1024
MAX_IDS = 4096
MAX_ROUNDS = 16
KNOWN_LIMIT = 50_000
POPULAR_FIRST = 100


def thread_key(thread: bytes) -> bytes:
    """`forum:t/<thread id>`: the signed thread metadata, findable by id alone."""
    return META_NS + b":t/" + thread


def holder_key(thread: bytes) -> bytes:
    """`forumh:<thread id>`: one record per node that holds the thread in full."""
    return HOLDER_NS + b":" + thread


def validate_meta(record: Any) -> None:
    suffix = record.key[len(META_NS) + 3 :]
    if not record.key.startswith(META_NS + b":t/") or len(suffix) != 32:
        raise InvalidRecord("a forum key is forum:t/<32-byte thread id>")
    try:
        meta = ForumRecord.decode(record.value)
    except InvalidForumRecord as exc:
        raise InvalidRecord(f"forum thread record: {exc}") from None
    if meta.kind != "thread" or meta.id != suffix:
        raise InvalidRecord("the value must be the thread record whose id is in the key")


def validate_holder(record: Any) -> None:
    if len(record.key) != len(HOLDER_NS) + 1 + 32:
        raise InvalidRecord("a holder key is forumh:<32-byte thread id>")
    try:
        value = decode_cbor(record.value)
    except ZeoneError as exc:
        raise InvalidRecord(f"holder record: {exc}") from None
    if (
        not isinstance(value, dict)
        or not isinstance(value.get("score"), (int, float))
        or value.get("role") not in ("seed", "full", "light")
        or len(record.value) > 256
    ):
        raise InvalidRecord("holder record value is {score: number, role: seed|full|light}")


def namespaces() -> list[Namespace]:
    return [
        Namespace(META_NS, validate_meta, description="forum thread metadata by thread id"),
        Namespace(
            HOLDER_NS,
            validate_holder,
            multi_publisher=True,
            max_ttl=24 * 3600,
            description="nodes holding a forum thread, with their popularity score",
        ),
    ]


def forum_role(node: Node, config: ForumConfig) -> str:
    if config.role != "auto":
        return config.role
    role = node.config.node.role
    return "light" if role in ("light", "mobile") else role


@attrs.define
class PeerSync:
    epoch: bytes = b""
    seq: int = 0
    last_recon: float = -math.inf


def _id_set(items: Any, what: str) -> set[bytes]:
    if not isinstance(items, list) or len(items) > MAX_IDS:
        raise ValueError(f"{what} is a list of at most {MAX_IDS} thread ids")
    if any(type(x) is not bytes or len(x) != 32 for x in items):
        raise ValueError(f"{what} holds 32-byte thread ids")
    return set(items)


def _id(text: Any, what: str = "id") -> bytes:
    if isinstance(text, bytes) and len(text) == 32:
        return text
    if isinstance(text, str):
        try:
            raw = bytes.fromhex(text)
        except ValueError:
            raw = b""
        if len(raw) == 32:
            return raw
    raise ValueError(f"{what} must be 64 hex digits")


class Forum:
    """Per-node forum state (in `node.plugin_state["forum"]`) and its service."""

    name = "forum"

    def __init__(
        self, node: Node, config: ForumConfig, *, clock: Callable[[], float] | None = None
    ):
        self.node = node
        self.config = config
        self.role = forum_role(node, config)
        self.clock = clock
        self.store: ForumStore | None = None
        self.index: SyncIndex | None = None
        self.peers: dict[NodeId, PeerSync] = {}
        self.epoch = b""
        self._send, self._receive = trio.open_memory_channel[tuple[ForumRecord, bool]](4096)
        #: Record id -> peers known to hold it (they sent it to us, or we pushed it to them).
        self._known: dict[bytes, set[NodeId]] = {}
        self._rng = random.Random()
        self._wake = trio.Event()
        self._emergency = trio.Event()
        #: Peers whose connection closed (and did not come back), with when: not holders.
        self._gone: dict[NodeId, float] = {}
        self._new_peers: set[NodeId] = set()
        self.watchers: set[trio.MemorySendChannel[dict[str, Any]]] = set()
        self.stats = {"pushed": 0, "pulled": 0, "reconciled": 0, "rereplicated": 0, "rejected": 0}
        self.last_sync: dict[str, float] = {}
        self._nursery: trio.Nursery | None = None

    # -- lifecycle ------------------------------------------------------------------------------

    def open_store(self) -> ForumStore:
        if self.store is None:
            path = Path(self.node.config.data_dir) / "forum.sqlite3"
            kwargs: dict[str, Any] = {"is_seed": self.role == "seed", "light": self.role == "light"}
            if self.clock is not None:
                kwargs["clock"] = self.clock
            self.store = ForumStore(path, self.config, **kwargs)
            self.index = SyncIndex(self.store.all_keys())
            self.store._sync_index = self.index
            self.store.listeners.append(self._on_applied)
            epoch_file = Path(self.node.config.data_dir) / "forum.epoch"
            if not epoch_file.exists():
                epoch_file.write_bytes(secrets.token_bytes(8))
            self.epoch = epoch_file.read_bytes()
        return self.store

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        store = self.open_store()
        self.node.network.on_connected.append(self._on_connected)
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self._push_loop)
                nursery.start_soon(self._sync_loop)
                nursery.start_soon(self._maintenance_loop)
                task_status.started()
                await trio.sleep_forever()
        finally:
            self._nursery = None
            if self._on_connected in self.node.network.on_connected:
                self.node.network.on_connected.remove(self._on_connected)
            store.close()
            self.store = None

    def _on_connected(self, conn: Any) -> None:
        self._gone.pop(conn.peer_id, None)
        if PROTOCOL in conn.peer_capabilities:
            self._new_peers.add(conn.peer_id)
            self._wake.set()
        self._spawn(self._watch_close, conn)

    def _spawn(self, fn: Any, *args: Any) -> None:
        """Start a background task unless the service is stopping (callbacks from the
        connection manager may arrive while our nursery closes)."""
        if self._nursery is None:
            return
        with contextlib.suppress(RuntimeError):  # nursery closed: we are shutting down
            self._nursery.start_soon(fn, *args)

    async def _watch_close(self, conn: Any) -> None:
        """A forum peer vanished: its holder records still count until they expire, so
        discount it now and re-check replication at once (emergency re-replication, §6.2)."""
        await conn.closed.wait()
        current = self.node.network.connections.get(conn.peer_id)
        if PROTOCOL in conn.peer_capabilities and (current is None or current is conn):
            self._gone[conn.peer_id] = self.clock_now()
            self._emergency.set()

    def _on_applied(self, record: ForumRecord) -> None:
        relayed = record.id in self._known
        try:  # noqa: SIM105
            self._send.send_nowait((record, relayed))
        except trio.WouldBlock:
            pass  # a burst beyond the buffer is left to pull/reconciliation
        event = self._event(record)
        for watcher in list(self.watchers):
            try:
                watcher.send_nowait(event)
            except (trio.WouldBlock, trio.ClosedResourceError):
                self.watchers.discard(watcher)

    @staticmethod
    def _event(record: ForumRecord) -> dict[str, Any]:
        return {
            "type": record.kind,
            "id": record.id.hex(),
            "thread": record.thread.hex() if record.thread else None,
            "author": record.author.hex(),
        }

    def forum_peers(self) -> list[NodeId]:
        return [
            peer
            for peer, conn in list(self.node.network.connections.items())
            if PROTOCOL in conn.peer_capabilities and not conn.closed.is_set()
        ]

    # -- local authoring ------------------------------------------------------------------------

    def _require_store(self) -> ForumStore:
        if self.store is None:
            raise RuntimeError("the forum service is not running")
        return self.store

    def publish(self, body: Any, *, anonymous: bool = False) -> ForumRecord:
        """Sign, mine and ingest a record of this node's user; raises ValueError with the reason.

        `anonymous` (posts and votes): signed for a ring of `ring_size` identities this node
        knows, us among them, with a key image scoped to the thread."""
        store = self._require_store()
        now = store.clock()
        created = int(now * 1000)
        author = self.node.identity.public_key
        anon_ring = None
        if anonymous:
            anon_ring = self._ring(store)
            author = ring.key_image(self.node.identity.signing_key, body.thread)
        slot = store.next_slot(author, created)
        limit = store.rate_limit(author, now)
        if slot >= limit:
            raise ValueError(
                f"rate limit: {limit} records per {self.config.rate_window:g}s for this identity; "
                "try again shortly"
            )
        record = ForumRecord.create(
            self.node.identity,
            body,
            pow_bits=self.config.pow_bits,
            created=created,
            slot=slot,
            anon_ring=anon_ring,
        )
        if record.thread is not None and self.role == "light":
            store.subscribed.add(record.thread)
        result = store.ingest(record, local=True)
        if not result.ok:
            raise ValueError(result.reason)
        if record.kind == "thread":
            self._spawn(self._publish_meta, record)
        return record

    def _ring(self, store: ForumStore) -> list[bytes]:
        me = self.node.identity.public_key
        others = store.known_authors(exclude=me)
        need = self.config.ring_size - 1
        if len(others) < need:
            raise ValueError(
                f"an anonymous ring needs {need} other known identities; this node knows "
                f"{len(others)}"
            )
        members = [me, *self._rng.sample(others, need)]
        self._rng.shuffle(members)
        return members

    async def _publish_meta(self, record: ForumRecord) -> None:
        try:
            with trio.move_on_after(30):
                await self.node.dht.put(thread_key(record.id), record.wire, 24 * 3600)
        except (ZeoneError, OSError, ValueError) as exc:
            log.info("could not publish thread %s to the DHT: %s", record.id.hex()[:12], exc)

    def new_thread(
        self, title: str, content: str, *, category: str = "general", tags: tuple[str, ...] = ()
    ) -> tuple[ForumRecord, ForumRecord]:
        if len(content.encode()) > self.config.max_post_bytes:
            raise ValueError(f"post is larger than {self.config.max_post_bytes} bytes")
        thread = self.publish(ThreadBody(title=title, category=category, tags=tags))
        post = self.publish(PostBody(thread=thread.id, content=content))
        return thread, post

    def reply(
        self,
        thread: bytes,
        content: str,
        parent: bytes | None = None,
        attachments: tuple[bytes, ...] = (),
        *,
        anonymous: bool = False,
    ) -> ForumRecord:
        if not self._require_store().thread_exists(thread):
            raise LookupError("no such thread")
        return self.publish(
            PostBody(thread=thread, content=content, parent=parent, attachments=attachments),
            anonymous=anonymous,
        )

    def _target_thread(self, target: bytes) -> bytes:
        store = self._require_store()
        if store.thread_exists(target):
            return target
        thread = store.record_thread(target)
        if thread is None:
            raise LookupError("no such post or thread")
        return thread

    def vote(
        self, target: bytes, value: int, reaction: str = "", *, anonymous: bool = False
    ) -> ForumRecord:
        return self.publish(
            VoteBody(
                thread=self._target_thread(target), target=target, value=value, reaction=reaction
            ),
            anonymous=anonymous,
        )

    def delete(self, target: bytes) -> ForumRecord:
        return self.publish(TombstoneBody(thread=self._target_thread(target), target=target))

    def edit(self, target: bytes, content: str) -> ForumRecord:
        return self.publish(
            EditBody(thread=self._target_thread(target), target=target, content=content)
        )

    def set_profile(self, nick: str, about: str = "") -> ForumRecord:
        return self.publish(ProfileBody(nick=nick, about=about))

    # -- protocol (server side) -----------------------------------------------------------------

    async def handle(self, request: Request) -> Any:
        store = self.store
        if store is None or self.index is None:
            raise RemoteError("unavailable", "the forum is starting")
        payload = request.payload
        if not isinstance(payload, dict) or not isinstance(payload.get("op"), str):
            raise RemoteError("bad-request", "send {op: push|get|since|recon|thread, ...}")
        op = payload["op"]
        try:
            if op == "push":
                return self._serve_push(request.peer, payload.get("records"))
            if op == "get":
                return self._serve_get(payload.get("ids"))
            if op == "since":
                return self._serve_since(payload)
            if op == "index":
                return self._serve_index(payload)
            if op == "recon":
                outcome = process(self.index, payload.get("msg"), initiator=False)
                return {"msg": outcome.reply}
            if op == "thread":
                tid = _id(payload.get("id"), "thread id")
                offset = payload.get("offset", 0)
                if type(offset) is not int or offset < 0:
                    raise ValueError("offset is a non-negative integer")
                if offset == 0:
                    store.note_read(tid, f"peer:{request.peer}")
                records, more = self._bounded(store.thread_wires(tid)[offset:])
                return {"records": records, "more": more}
        except (ValueError, TypeError, ReconcileError) as exc:
            raise RemoteError("bad-request", str(exc)) from None
        raise RemoteError("bad-request", f"unknown op {op!r}")

    def _serve_push(self, peer: NodeId, records: Any) -> dict[str, Any]:
        if not isinstance(records, list) or len(records) > MAX_BATCH:
            raise ValueError(f"records must be a list of at most {MAX_BATCH} records")
        results = self.ingest_from(peer, records)
        rejected = [[i, r.reason] for i, r in enumerate(results) if r.status == "rejected"]
        return {
            "accepted": sum(r.status == ACCEPTED for r in results),
            "rejected": rejected[:32],
        }

    def ingest_from(self, peer: NodeId | None, records: list[Any]) -> list[Ingest]:
        store = self._require_store()
        wires = [r for r in records if type(r) is bytes]
        if peer is not None:
            for wire in wires:
                self._note_known(hashlib.blake2b(wire, digest_size=32).digest(), peer)
        results = store.ingest_many(wires)
        for result in results:
            if result.status == "rejected":
                self.stats["rejected"] += 1
                log.debug("rejected a forum record from %s: %s", peer, result.reason)
        return results

    def _note_known(self, record_id: bytes, peer: NodeId) -> set[NodeId]:
        known = self._known.get(record_id)
        if known is None:
            if len(self._known) >= KNOWN_LIMIT:
                del self._known[next(iter(self._known))]
            known = self._known[record_id] = set()
        known.add(peer)
        return known

    def _bounded(self, wires: list[bytes]) -> tuple[list[bytes], bool]:
        out, size = [], 0
        for wire in wires:
            if size + len(wire) > MAX_REPLY_BYTES and out:
                return out, True
            out.append(wire)
            size += len(wire)
        return out, False

    def _serve_get(self, ids: Any) -> dict[str, Any]:
        if not isinstance(ids, list) or len(ids) > MAX_IDS:
            raise ValueError(f"ids must be a list of at most {MAX_IDS} ids or prefixes")
        assert self.index is not None
        full: list[bytes] = []
        for item in ids:
            if type(item) is not bytes or not 8 <= len(item) <= 32:
                raise ValueError("an id is 8-32 bytes")
            full.extend(self.index.resolve(item[:8]) if len(item) < 32 else [item])
        records, more = self._bounded(self._require_store().get_wires(full))
        return {"records": records, "more": more}

    def _serve_since(self, payload: dict[str, Any]) -> dict[str, Any]:
        seq, limit = payload.get("seq", 0), payload.get("limit", MAX_BATCH)
        if type(seq) is not int or type(limit) is not int or seq < 0 or not 0 < limit <= 4096:
            raise ValueError("seq is a non-negative integer, limit 1-4096")
        threads = payload.get("threads")
        skip_until = payload.get("skip_until", 0)
        if type(skip_until) is not int:
            raise ValueError("skip_until is an integer")
        wires, last, more = self._require_store().records_since(
            seq,
            limit,
            max_bytes=MAX_REPLY_BYTES,
            threads=None if threads is None else _id_set(threads, "threads"),
            skip=_id_set(payload.get("skip", []), "skip"),
            skip_until=skip_until,
        )
        return {"records": wires, "seq": last, "epoch": self.epoch, "more": more}

    def _serve_index(self, payload: dict[str, Any]) -> dict[str, Any]:
        offset = payload.get("offset", 0)
        if type(offset) is not int or offset < 0:
            raise ValueError("offset is a non-negative integer")
        store = self._require_store()
        wires = store.thread_index(offset, MAX_BATCH)
        return {
            "records": wires,
            "more": len(wires) == MAX_BATCH,
            "seq": store.max_seq(),
            "epoch": self.epoch,
        }

    # -- replication (client side) --------------------------------------------------------------

    async def _push_loop(self) -> None:
        while True:
            record, origin = await self._receive.receive()
            batch = [(record, origin)]
            while len(batch) < MAX_BATCH:
                try:
                    batch.append(self._receive.receive_nowait())
                except trio.WouldBlock:
                    break
            peers = self.forum_peers()
            per_peer: dict[NodeId, list[bytes]] = {}
            for record, relayed in batch:
                known = self._known.get(record.id, set())
                targets = [p for p in peers if p not in known]
                # Our own records go to every peer; relayed ones to a random few that are not
                # known to hold them (epidemic push: O(fanout) copies per node instead of
                # O(peers); the periodic sync repairs the rare miss).
                if relayed and len(targets) > self.config.relay_fanout:
                    targets = self._rng.sample(targets, self.config.relay_fanout)
                for peer in targets:
                    self._note_known(record.id, peer)
                    per_peer.setdefault(peer, []).append(record.wire)
            async with trio.open_nursery() as nursery:
                for peer, wires in per_peer.items():
                    nursery.start_soon(self._push_to, peer, wires)

    async def _push_to(self, peer: NodeId, wires: list[bytes]) -> None:
        try:
            await self.node.rpc.request(
                peer, PROTOCOL, {"op": "push", "records": wires}, timeout=20
            )
            self.stats["pushed"] += len(wires)
        except (ZeoneError, OSError) as exc:
            log.debug("push to %s failed: %s", peer.short(), exc)

    async def _sync_loop(self) -> None:
        while True:
            with trio.move_on_after(self.config.sync_interval):
                await self._wake.wait()
            self._wake = trio.Event()
            new, self._new_peers = self._new_peers, set()
            peers = self.forum_peers()
            async with trio.open_nursery() as nursery:
                for peer in peers:
                    nursery.start_soon(self._sync_quietly, peer, peer in new)

    async def _sync_quietly(self, peer: NodeId, reconcile: bool) -> None:
        try:
            with trio.move_on_after(120):
                await self.sync_with(peer, reconcile=reconcile)
        except (ZeoneError, OSError, ValueError) as exc:
            log.debug("sync with %s failed: %s", peer.short(), exc)

    async def sync_with(self, peer: NodeId, *, reconcile: bool = True) -> dict[str, int]:
        """Sync with `peer` (§6.4).

        First contact: the thread index first (most popular first), then, unless we are a light
        node, the `POPULAR_FIRST` most popular threads whole, then everything else. Afterwards:
        an incremental pull from our watermark in the peer's log, then (on new connections and
        every ten rounds) set reconciliation. A light node pulls only thread metadata and the
        threads it holds, and does not reconcile.
        """
        stats = {"pulled": 0, "fetched": 0, "pushed": 0, "rounds": 0}
        state = self.peers.setdefault(peer, PeerSync())
        store = self._require_store()
        light = self.role == "light"
        request: dict[str, Any] = {"op": "since", "limit": MAX_BATCH}
        if not state.epoch:
            skip, skip_until = await self._first_contact(peer, stats, light)
            if skip:
                request.update({"skip": sorted(skip), "skip_until": skip_until})
        while True:
            request["seq"] = state.seq if state.epoch else 0
            if light:
                request["threads"] = sorted(store.subscribed)[:MAX_IDS]
            answer = await self.node.rpc.request(peer, PROTOCOL, request, timeout=30)
            if not isinstance(answer, dict) or type(answer.get("seq")) is not int:
                raise ValueError("bad since answer")
            epoch = answer.get("epoch", b"")
            if state.epoch and epoch != state.epoch:  # the peer's store was replaced: restart
                state.epoch, state.seq = epoch, 0
                continue
            records = answer.get("records") or []
            self.ingest_from(peer, records if isinstance(records, list) else [])
            stats["pulled"] += len(records)
            state.epoch, state.seq = epoch, answer["seq"]
            if not answer.get("more"):
                break
        periodic = (self.clock_now() - state.last_recon) > 10 * self.config.sync_interval
        # Seeds replicate actively (§6.2): they reconcile with every peer every round.
        if not light and (reconcile or periodic or self.role == "seed"):
            result = await self.reconcile_with(peer)
            stats.update({k: result[k] for k in ("fetched", "pushed", "rounds")})
            state.last_recon = self.clock_now()
        self.stats["pulled"] += stats["pulled"]
        self.last_sync[str(peer)] = self.clock_now()
        return stats

    async def _first_contact(
        self, peer: NodeId, stats: dict[str, int], light: bool
    ) -> tuple[set[bytes], int]:
        """Index first, then the most popular threads whole; returns the threads fetched whole
        and the peer's log position at that time (the pull that follows skips them up to it)."""
        order: list[bytes] = []
        offset = 0
        peer_seq = 0
        while True:
            answer = await self.node.rpc.request(
                peer, PROTOCOL, {"op": "index", "offset": offset}, timeout=30
            )
            records = answer.get("records") if isinstance(answer, dict) else None
            if not isinstance(records, list):
                raise ValueError("bad index answer")
            if offset == 0 and type(answer.get("seq")) is int:
                peer_seq = answer["seq"]
            for result in self.ingest_from(peer, records):
                if result.record is not None and result.record.kind == "thread":
                    order.append(result.record.id)
            stats["pulled"] += len(records)
            offset += len(records)
            if not answer.get("more") or not records:
                break
        if light:
            return set(), 0
        popular = order[:POPULAR_FIRST]
        fetched: set[bytes] = set()
        limiter = trio.CapacityLimiter(8)

        async def fetch(thread: bytes) -> None:
            async with limiter:
                stats["pulled"] += await self.pull_thread(peer, thread)
            fetched.add(thread)

        async with trio.open_nursery() as nursery:
            for thread in popular:
                nursery.start_soon(fetch, thread)
        return fetched, peer_seq

    def clock_now(self) -> float:
        return trio.current_time()

    async def reconcile_with(self, peer: NodeId) -> dict[str, int]:
        """Range-based set reconciliation with `peer`, then fetch what we lack and push what it
        lacks. Returns counts and the bytes of reconciliation messages exchanged."""
        assert self.index is not None
        store = self._require_store()
        message = initiate(self.index)
        need: set[bytes] = set()
        have: set[bytes] = set()
        rounds = sent = received = 0
        while message and rounds < MAX_ROUNDS:
            rounds += 1
            sent += len(encode_cbor(message))
            answer = await self.node.rpc.request(
                peer, PROTOCOL, {"op": "recon", "msg": message}, timeout=60
            )
            reply = answer.get("msg") if isinstance(answer, dict) else None
            received += len(encode_cbor(reply)) if reply is not None else 0
            if not reply:
                break
            outcome = process(self.index, reply, initiator=True)
            need |= outcome.need
            have |= outcome.have
            message = outcome.reply
        fetched = 0
        wanted = sorted(need)
        while wanted:
            chunk, wanted = wanted[:MAX_IDS], wanted[MAX_IDS:]
            while chunk:
                answer = await self.node.rpc.request(
                    peer, PROTOCOL, {"op": "get", "ids": chunk}, timeout=60
                )
                records = answer.get("records", []) if isinstance(answer, dict) else []
                if not isinstance(records, list) or not records:
                    break
                received += sum(len(r) for r in records if type(r) is bytes)
                self.ingest_from(peer, records)
                fetched += len(records)
                if not answer.get("more"):
                    break
                got = {
                    hashlib.blake2b(r, digest_size=32).digest()[:8]
                    for r in records
                    if type(r) is bytes
                }
                chunk = [p for p in chunk if p not in got]
        pushed = 0
        wires = store.get_wires(sorted(have))
        for start in range(0, len(wires), MAX_BATCH):
            batch = self._bounded(wires[start : start + MAX_BATCH])[0]
            sent += sum(len(w) for w in batch)
            await self.node.rpc.request(
                peer, PROTOCOL, {"op": "push", "records": batch}, timeout=60
            )
            pushed += len(batch)
        self.stats["reconciled"] += 1
        return {
            "fetched": fetched,
            "pushed": pushed,
            "rounds": rounds,
            "bytes_sent": sent,
            "bytes_received": received,
        }

    async def fetch_thread(self, thread: bytes) -> bool:
        """Lazy load (light nodes, evicted threads): get a thread in full from a holder."""
        store = self._require_store()
        store.unevict(thread)
        candidates = list(self.forum_peers())
        try:
            with trio.move_on_after(20):
                holders = await self.node.dht.get(holder_key(thread))
                for record in holders:
                    peer = record.publisher_id
                    if peer != self.node.node_id and peer not in candidates:
                        candidates.insert(0, peer)
        except (ZeoneError, OSError):
            pass
        for peer in candidates:
            try:
                await self.pull_thread(peer, thread)
            except (ZeoneError, OSError, ValueError):
                continue
            if store.thread_exists(thread):
                return True
        return store.thread_exists(thread)

    async def pull_thread(self, peer: NodeId, thread: bytes) -> int:
        """Every record of `thread` that `peer` holds, page by page; returns how many."""
        offset = 0
        while True:
            answer = await self.node.rpc.request(
                peer, PROTOCOL, {"op": "thread", "id": thread, "offset": offset}, timeout=30
            )
            records = answer.get("records") if isinstance(answer, dict) else None
            if not isinstance(records, list):
                raise ValueError("bad thread answer")
            self.ingest_from(peer, records)
            offset += len(records)
            if not answer.get("more") or not records:
                return offset

    # -- maintenance: popularity, holders, re-replication, storage policy -----------------------

    async def _maintenance_loop(self) -> None:
        while True:
            with trio.move_on_after(self.config.maintenance_interval):
                await self._emergency.wait()
            self._emergency = trio.Event()
            try:
                await self.maintain()
            except (ZeoneError, OSError) as exc:
                log.info("forum maintenance: %s", exc)

    async def maintain(self) -> dict[str, int]:
        store = self._require_store()
        store.rescore()
        held = store.held_threads()
        holder_ttl = max(1, int(3 * self.config.maintenance_interval))
        for peer, since in list(self._gone.items()):  # their holder records have expired
            if self.clock_now() - since > holder_ttl:
                del self._gone[peer]
        under: list[tuple[bytes, int]] = []
        counts: dict[bytes, int] = {}

        async def one(thread: bytes) -> None:
            row = store.db.execute("SELECT score FROM threads WHERE id = ?", (thread,)).fetchone()
            score = row[0] if row else 0.0
            value = encode_cbor({"score": float(score), "role": self.role})
            with trio.move_on_after(30):
                with contextlib.suppress(ZeoneError, OSError, InvalidRecord):
                    await self.node.dht.put(holder_key(thread), value, holder_ttl)
                records = [
                    r
                    for r in await self.node.dht.get(holder_key(thread))
                    if r.publisher_id not in self._gone
                ]
                roles = [self._role_of(r) for r in records]
                total = sum(role != "light" for role in roles)
                seeds = sum(role == "seed" for role in roles)
                store.set_holders(thread, total, seeds)
                counts[thread] = total
                target = popularity.replication_target(score, self.config.replication_factor)
                if total < target:
                    under.append((thread, target - total))

        limiter = trio.CapacityLimiter(16)

        async def limited(thread: bytes) -> None:
            async with limiter:
                with contextlib.suppress(ZeoneError, OSError):
                    await one(thread)

        async with trio.open_nursery() as nursery:
            for thread in held:
                nursery.start_soon(limited, thread)
        pushed = 0
        peers = self.forum_peers()
        for thread, missing in under:
            wires = store.thread_wires(thread)
            holders = {r.publisher_id for r in await self._holders(thread)}
            targets = [p for p in peers if p not in holders][:missing]
            for peer in targets:
                for start in range(0, len(wires), MAX_BATCH):
                    try:
                        await self.node.rpc.request(
                            peer,
                            PROTOCOL,
                            {
                                "op": "push",
                                "records": self._bounded(wires[start : start + MAX_BATCH])[0],
                            },
                            timeout=30,
                        )
                    except (ZeoneError, OSError):
                        break
                pushed += 1
        self.stats["rereplicated"] += pushed
        factor = self.config.replication_factor
        evicted = store.enforce_policy(protected=lambda t: counts.get(t, 0) <= factor)
        store.expire_pending(store.clock() - 600)
        return {
            "held": len(held),
            "under_replicated": len(under),
            "pushed": pushed,
            "evicted": len(evicted),
        }

    async def _holders(self, thread: bytes) -> list[Any]:
        try:
            with trio.move_on_after(10):
                return await self.node.dht.get(holder_key(thread))
        except (ZeoneError, OSError):
            pass
        return []

    @staticmethod
    def _role_of(record: Any) -> str:
        try:
            return str(decode_cbor(record.value).get("role"))
        except (ZeoneError, AttributeError):
            return "light"

    def status(self) -> dict[str, Any]:
        store = self.store
        counts = store.counts() if store is not None else {}
        return {"role": self.role, **counts, "peers": len(self.forum_peers()), **self.stats}


def state(node: Node) -> Forum:
    forum = node.plugin_state.get("forum")
    if forum is None:
        raise RuntimeError("the forum plugin is not enabled on this node")
    return forum
