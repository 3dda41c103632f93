"""The Kademlia DHT: routing table, iterative lookups, signed records, SQLite store, the service.

Layers, each usable on its own:

- `contact.Contact` — a node id with addresses (validated wire form);
- `routing.RoutingTable` — k-buckets, ping-before-evict, per-subnet limits;
- `records.Record` / `records.Validators` — signed records and per-namespace rules, with the
  built-in `peer:`, `provider:` and `service:` namespaces in `namespaces`;
- `store.RecordStore` — the durable SQLite store;
- `lookup.Lookups` — iterative FIND_NODE / FIND_VALUE / STORE over an abstract `DhtRpc`, with
  S/Kademlia disjoint paths;
- `dht.Dht` — the per-node service gluing them together, with the inbound `handle_*` methods;
- `messages` — the CBOR payloads of the DHT frame types, for the node's `DhtRpc`;
- `simulation` — an in-process network of `Dht`s for tests and measurements.

Roles: a peer is a DHT server unless its handshake says otherwise. Servers announce the
`DHT_SERVER_CAPABILITY` protocol id among their HELLO capabilities; light and mobile nodes do not,
and are passed to the handlers as `sender_is_client=True`.
"""

from zeone.dht.contact import Contact
from zeone.dht.dht import Dht, DhtClientOnly, DhtConfig
from zeone.dht.lookup import (
    RPC_FAILURES,
    DhtRpc,
    DhtRpcError,
    LookupConfig,
    LookupResult,
    Lookups,
    StoreResult,
)
from zeone.dht.namespaces import (
    CLIENT_ROLES,
    ROLES,
    PeerInfo,
    Provider,
    ProviderInfo,
    kv_key,
    peer_key,
    provider_key,
    service_key,
)
from zeone.dht.records import InvalidRecord, Namespace, Record, Validators, key_id
from zeone.dht.routing import RoutingTable
from zeone.dht.store import PutOutcome, RecordStore

DHT_SERVER_CAPABILITY = "/zeone/dht/1"
"""HELLO capability announced by nodes that serve DHT requests (seed and full roles)."""

__all__ = [
    "CLIENT_ROLES",
    "DHT_SERVER_CAPABILITY",
    "ROLES",
    "RPC_FAILURES",
    "Contact",
    "Dht",
    "DhtClientOnly",
    "DhtConfig",
    "DhtRpc",
    "DhtRpcError",
    "InvalidRecord",
    "LookupConfig",
    "LookupResult",
    "Lookups",
    "Namespace",
    "PeerInfo",
    "Provider",
    "ProviderInfo",
    "PutOutcome",
    "Record",
    "RecordStore",
    "RoutingTable",
    "StoreResult",
    "Validators",
    "key_id",
    "kv_key",
    "peer_key",
    "provider_key",
    "service_key",
]
