"""The node's DHT: the `Dht` library wired to the node's connections, disk and configuration.

- `ConnectionDhtRpc` carries the four Kademlia RPCs on the DHT frame types (0x10-0x15) over the
  same authenticated connections every other protocol uses (`Connection.call`).
- `DhtService` is the kernel service: it answers inbound DHT frames, feeds every connected DHT
  server into the routing table, joins the network through the configured seed peers (and the
  routing table saved at the last shutdown, so a restart needs no seed), and saves the table
  periodically and on shutdown.

Roles (seed 004 §3): seed and full nodes are DHT servers and say so in their HELLO
(`DHT_SERVER_CAPABILITY`); light and mobile nodes only issue lookups, never enter routing tables
and answer DHT requests with empty results.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Awaitable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio

from zeone.dht import DHT_SERVER_CAPABILITY
from zeone.dht.contact import Contact
from zeone.dht.dht import Dht, DhtConfig
from zeone.dht.messages import (
    FindNode,
    FindNodeResponse,
    FindValue,
    FindValueResponse,
    Store,
    StoreResponse,
)
from zeone.dht.namespaces import CLIENT_ROLES, PeerInfo, peer_key
from zeone.dht.records import InvalidRecord, Validators
from zeone.dht.routing import RoutingTable
from zeone.dht.store import RecordStore
from zeone.errors import ZeoneError
from zeone.identity import NodeId
from zeone.net.manager import KEEPALIVE_PROTOCOL, UNSPECIFIED_HOSTS, usable_addresses
from zeone.net.transport import parse_address
from zeone.rpc import RemoteError
from zeone.wire.frame import MessageType, decode_cbor, encode_cbor

if TYPE_CHECKING:
    from zeone.net.connection import Connection, FrameHandler
    from zeone.node import Node

log = logging.getLogger(__name__)

STORE_FILE = "dht.sqlite3"
TABLE_FILE = "routing-table.cbor"
SAVE_INTERVAL = 300.0
BOOTSTRAP_RETRY = 2.0
PEER_RECORD_TTL = 6 * 3600
MAX_PEER_ADDRESSES = 16


class ConnectionDhtRpc:
    """`DhtRpc` over the node's connection manager."""

    def __init__(self, node: Node) -> None:
        self.network = node.network

    async def _connection(self, contact: Contact) -> Connection:
        known = self.network.book.setdefault(contact.node_id, [])
        known.extend(a for a in usable_addresses(contact.addresses) if a not in known)
        return await self.network.connect(contact.node_id, resolve=False)

    async def find_node(self, contact: Contact, target: Any) -> list[Contact]:
        conn = await self._connection(contact)
        payload = await conn.call(
            MessageType.DHT_FIND_NODE, lambda rid: FindNode(rid, target).to_wire()
        )
        return FindNodeResponse.from_wire(payload).contacts

    async def find_value(self, contact: Contact, key: bytes) -> tuple[list[Any], list[Contact]]:
        conn = await self._connection(contact)
        payload = await conn.call(
            MessageType.DHT_FIND_VALUE, lambda rid: FindValue(rid, key).to_wire()
        )
        answer = FindValueResponse.from_wire(payload)
        return answer.records, answer.contacts

    async def store(self, contact: Contact, record: Any) -> bool:
        conn = await self._connection(contact)
        payload = await conn.call(MessageType.DHT_STORE, lambda rid: Store(rid, record).to_wire())
        return StoreResponse.from_wire(payload).ok

    async def ping(self, contact: Contact) -> bool:
        conn = await self._connection(contact)
        with contextlib.suppress(RemoteError):  # an error answer is an answer
            await conn.request(KEEPALIVE_PROTOCOL, None, counts_as_activity=False)
        return True


class DhtService:
    """Kernel service owning the node's `Dht`."""

    name = "dht"

    def __init__(self, node: Node, validators: Validators) -> None:
        self.node = node
        self.client_only = node.config.node.role in CLIENT_ROLES
        data_dir = node.config.data_dir
        self.table_path = data_dir / TABLE_FILE
        self.store = RecordStore(data_dir / STORE_FILE, validators)
        table, skipped = _load_table(self.table_path, node.node_id)
        if skipped:
            log.warning("skipped %d unusable entries of %s", skipped, self.table_path)
        self.dht = Dht(
            node.identity,
            ConnectionDhtRpc(node),
            store=self.store,
            validators=validators,
            config=DhtConfig(
                k=node.config.dht.k,
                alpha=node.config.dht.alpha,
                disjoint_paths=node.config.dht.disjoint_paths,
                rpc_timeout=node.config.dht.rpc_timeout,
                put_quorum=node.config.dht.put_quorum or None,
            ),
            client_only=self.client_only,
            table=table,
        )

    # -- inbound frames -----------------------------------------------------------------------

    def frame_handlers(self) -> dict[MessageType, FrameHandler]:
        return {
            MessageType.DHT_FIND_NODE: self._find_node,
            MessageType.DHT_FIND_VALUE: self._find_value,
            MessageType.DHT_STORE: self._store,
        }

    def _sender(self, conn: Connection) -> tuple[Contact, bool]:
        addresses = tuple(self.node.network.book.get(conn.peer_id, []))
        return Contact(conn.peer_id, addresses), DHT_SERVER_CAPABILITY not in conn.peer_capabilities

    def _find_node(self, conn: Connection, payload: Any) -> list[Any]:
        request = FindNode.from_wire(payload)
        if self.client_only:
            return FindNodeResponse(request.request_id, []).to_wire()
        sender, is_client = self._sender(conn)
        contacts = self.dht.handle_find_node(sender, request.target, sender_is_client=is_client)
        return FindNodeResponse(request.request_id, contacts).to_wire()

    def _find_value(self, conn: Connection, payload: Any) -> list[Any]:
        request = FindValue.from_wire(payload)
        if self.client_only:
            return FindValueResponse(request.request_id, [], []).to_wire()
        sender, is_client = self._sender(conn)
        records, contacts = self.dht.handle_find_value(
            sender, request.key, sender_is_client=is_client
        )
        return FindValueResponse(request.request_id, records, contacts).to_wire()

    def _store(self, conn: Connection, payload: Any) -> list[Any] | Awaitable[list[Any]]:
        request = Store.from_wire(payload)
        if self.client_only:
            return StoreResponse(request.request_id, False, "DHT client").to_wire()
        sender, is_client = self._sender(conn)
        return self._store_durably(request, sender, is_client)

    async def _store_durably(self, request: Store, sender: Contact, is_client: bool) -> list[Any]:
        stored = await self.dht.handle_store_async(
            sender, request.record, sender_is_client=is_client
        )
        reason = "" if stored else "rejected"
        return StoreResponse(request.request_id, stored, reason).to_wire()

    def on_connected(self, conn: Connection) -> None:
        """Every connected DHT server is a routing-table candidate (clients never are)."""
        if DHT_SERVER_CAPABILITY in conn.peer_capabilities:
            sender, _ = self._sender(conn)
            if sender.addresses:
                self.dht.observe(sender)

    # -- service --------------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self.dht.set_addresses(self.node.network.listen_addresses)
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(self.dht.run)
                nursery.start_soon(self._join)
                nursery.start_soon(self._save_periodically)
                task_status.started()
        finally:
            self._save_table()
            self.store.close()

    async def _join(self) -> None:
        """Bootstrap from the saved table and the seed peers; retry while the table is empty."""
        while True:
            seeds = [
                Contact(peer.node_id, (peer.address,))
                for peer in self.node.network.bootstrap
                if peer.node_id is not None and peer.address
            ]
            if seeds or len(self.dht.table):
                try:
                    size = await self.dht.bootstrap(seeds)
                except ZeoneError as exc:
                    log.debug("DHT bootstrap failed: %s", exc)
                    size = 0
                if size:
                    log.info("joined the DHT: %d contacts in the routing table", size)
                    await self._publish_peer_record()
                    return
            await trio.sleep(BOOTSTRAP_RETRY)

    async def _publish_peer_record(self) -> None:
        """Tell the network how to reach us (republished by the Dht while we run).

        Only dialable addresses go in: a listener on 0.0.0.0 is learned by peers from the
        connections we make instead.
        """
        addresses = [a for a in self.node.network.listen_addresses if _dialable(a)][
            :MAX_PEER_ADDRESSES
        ]
        if not addresses:
            return
        info = PeerInfo(
            addresses=tuple(addresses),
            transports=tuple(self.node.transports.schemes()),
            capabilities=tuple(self.node.network.hello().capabilities),
            role=self.node.config.node.role,
        )
        try:
            await self.dht.put(peer_key(self.node.node_id), info.to_value(), PEER_RECORD_TTL)
        except ZeoneError as exc:
            log.warning("could not publish this node's peer record: %s", exc)

    async def resolve(self, node_id: NodeId) -> list[str]:
        """Addresses from ``node_id``'s own signed peer record in the DHT."""
        for record in await self.dht.get(peer_key(node_id)):
            try:
                return list(PeerInfo.from_value(record.value).addresses)
            except InvalidRecord:
                continue
        return []

    async def _save_periodically(self) -> None:
        while True:
            await trio.sleep(SAVE_INTERVAL)
            self._save_table()

    def _save_table(self) -> None:
        """Write the routing table atomically, so a restart can rejoin without seeds."""
        try:
            tmp = self.table_path.with_suffix(".tmp")
            tmp.write_bytes(encode_cbor(self.dht.table.to_records()))
            os.replace(tmp, self.table_path)
        except (OSError, ValueError, TypeError) as exc:
            log.warning("could not save the routing table to %s: %s", self.table_path, exc)

    def statistics(self) -> dict[str, Any]:
        return {"role": "client" if self.client_only else "server", **self.dht.statistics()}


def _dialable(text: str) -> bool:
    try:
        address = parse_address(text)
    except ValueError:
        return False
    return address.host not in UNSPECIFIED_HOSTS and address.port != 0


def _load_table(path: Path, local: Any) -> tuple[RoutingTable | None, int]:
    try:
        data = decode_cbor(path.read_bytes())
    except FileNotFoundError:
        return None, 0
    except (OSError, ZeoneError) as exc:
        log.warning("ignoring unreadable routing table %s: %s", path, exc)
        return None, 0
    return RoutingTable.from_records(local, data)


__all__ = ["ConnectionDhtRpc", "DhtService"]
