"""Seed peers from DNS (seed 004 section 8.1): the fallback when no configured seed answers.

For each configured name the resolver reads:

- TXT records of the form ``zeone=<node id>@<address>`` -- pinned entries, preferred because the
  node id is checked in the handshake;
- SRV records (``_zeone._tcp.example.org``) -- host and port of seed nodes, dialed as
  ``tcp://host:port`` with the node id learned (not verified) from the handshake.

Everything in a DNS answer is untrusted input: malformed entries are skipped, and at most
``MAX_SEEDS`` are used.
"""

from __future__ import annotations

import logging

import dns.asyncresolver
import dns.exception
import dns.rdatatype
import dns.resolver

from zeone.config import parse_host_port
from zeone.net.peers import PeerAddress

log = logging.getLogger(__name__)

MAX_SEEDS = 20
TXT_PREFIX = "zeone="
TIMEOUT = 5.0


def make_resolver(server: str = "") -> dns.asyncresolver.Resolver:
    """The system resolver, or one asking only ``server`` (``host:port``, for tests/private DNS)."""
    if not server:
        return dns.asyncresolver.Resolver()
    host, port = parse_host_port(server)
    resolver = dns.asyncresolver.Resolver(configure=False)
    resolver.nameservers = [host]
    resolver.port = port
    return resolver


async def resolve_seeds(
    names: list[str], resolver: dns.asyncresolver.Resolver
) -> list[PeerAddress]:
    seeds: list[PeerAddress] = []
    for name in names:
        for kind in (dns.rdatatype.TXT, dns.rdatatype.SRV):
            try:
                answer = await resolver.resolve(name, kind, lifetime=TIMEOUT)
            except (dns.exception.DNSException, OSError) as exc:
                log.debug("no %s seeds at %s: %s", dns.rdatatype.to_text(kind), name, exc)
                continue
            for rdata in answer:
                peer = _parse(rdata, kind)
                if peer is not None and peer not in seeds:
                    seeds.append(peer)
                if len(seeds) >= MAX_SEEDS:
                    return seeds
    return seeds


def _parse(rdata: object, kind: dns.rdatatype.RdataType) -> PeerAddress | None:
    try:
        if kind == dns.rdatatype.TXT:
            text = b"".join(rdata.strings).decode()  # type: ignore[attr-defined]
            if not text.startswith(TXT_PREFIX):
                return None
            return PeerAddress.parse(text.removeprefix(TXT_PREFIX))
        host = rdata.target.to_text(omit_final_dot=True)  # type: ignore[attr-defined]
        return PeerAddress.parse(f"tcp://{host}:{rdata.port}")  # type: ignore[attr-defined]
    except (ValueError, UnicodeDecodeError, AttributeError) as exc:
        log.info("ignoring a malformed DNS seed entry: %s", exc)
        return None
