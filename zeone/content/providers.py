"""Provider records: announcing and finding the nodes that hold a content id, through the DHT.

Key layout: ``provider:content/`` + the 32-byte content digest (raw bytes), in the kernel's
multi-publisher `provider:` namespace (`zeone.dht.namespaces`): every holder publishes its own
signed record, so nobody can advertise a node that did not consent. Record metadata (a small CBOR
map, at most 4 KiB) is free for the plugins, e.g. ``{"complete": True}`` or a role.
"""

from __future__ import annotations

from typing import Any

from zeone.content.cid import ContentId
from zeone.dht.namespaces import Provider, provider_key

CONTENT_PREFIX = b"content/"


def content_provider_key(cid: ContentId) -> bytes:
    """``provider:content/<32-byte digest>``: the DHT key under which holders of `cid` announce."""
    return provider_key(CONTENT_PREFIX + cid.digest)


async def announce(
    node: Any, cid: ContentId, *, meta: dict[str, Any] | None = None, ttl: int | None = None
) -> None:
    """Publish that `node` holds `cid`; the DHT republishes it while the node runs."""
    await node.dht.provide(content_provider_key(cid), ttl, meta=meta)


def stop_announcing(node: Any, cid: ContentId) -> bool:
    """Stop republishing our record for `cid` (remote copies expire with their TTL)."""
    return node.dht.stop_publishing(content_provider_key(cid))


async def find_holders(node: Any, cid: ContentId, count: int = 20) -> list[Provider]:
    """Up to `count` holders of `cid` (most recent first), excluding `node` itself.

    Each `Provider` has `.contact.node_id`, `.contact.addresses` and `.info.meta`.
    """
    providers = await node.dht.find_providers(content_provider_key(cid), count + 1)
    return [p for p in providers if p.contact.node_id != node.node_id][:count]
