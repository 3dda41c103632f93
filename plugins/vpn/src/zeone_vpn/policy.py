"""Exit policy: which destinations an exit node connects to on behalf of others.

Syntax (``[plugins.vpn] policy``, an ordered list; the first matching rule wins)::

    "allow *:*"                 any address, any port
    "deny *:25"                 no SMTP
    "allow 203.0.113.0/24:80-443"
    "allow [2001:db8::]/32:443" (brackets optional: the port is always after the last colon)
    "allow 127.0.0.1/32:8000"   opens loopback, see below

A destination no rule matches is denied.

**Special-purpose space is closed unless opened by name.** Loopback, RFC 1918 private ranges,
link-local, CGNAT (100.64/10), multicast, reserved, unspecified, benchmarking and documentation
ranges, ULA (fc00::/7), and IPv6 forms that embed an IPv4 address (IPv4-mapped/-compatible,
NAT64, 6to4, Teredo: the embedded address is checked instead) are never matched by a rule whose
network is wider than the special block (``*``, ``0.0.0.0/0``, ``::/0``...): only an ``allow``
rule whose network lies entirely inside a special-purpose block reaches it. So ``allow *:*`` is
safe, and an operator who really wants to expose a local service writes
``allow 127.0.0.1/32:8080`` before it. Deny rules match everything as written.

The policy is checked at the exit **after** DNS resolution, against every resolved address, and
the exit connects to exactly the address it checked, so a name that resolves to a private
address (DNS rebinding) is refused the same way as the literal address.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from typing import Literal

import attrs

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

SPECIAL_V4 = tuple(
    ipaddress.IPv4Network(n)
    for n in (
        "0.0.0.0/8",  # "this network", unspecified
        "10.0.0.0/8",  # RFC 1918
        "100.64.0.0/10",  # CGNAT, RFC 6598
        "127.0.0.0/8",  # loopback
        "169.254.0.0/16",  # link-local
        "172.16.0.0/12",  # RFC 1918
        "192.0.0.0/24",  # IETF protocol assignments
        "192.0.2.0/24",  # TEST-NET-1
        "192.88.99.0/24",  # 6to4 relay anycast
        "192.168.0.0/16",  # RFC 1918
        "198.18.0.0/15",  # benchmarking
        "198.51.100.0/24",  # TEST-NET-2
        "203.0.113.0/24",  # TEST-NET-3
        "224.0.0.0/4",  # multicast
        "240.0.0.0/4",  # reserved, broadcast
    )
)
SPECIAL_V6 = tuple(
    ipaddress.IPv6Network(n)
    for n in (
        "::/128",  # unspecified
        "::1/128",  # loopback
        "::/96",  # IPv4-compatible (deprecated)
        "::ffff:0:0/96",  # IPv4-mapped
        "64:ff9b::/96",  # NAT64
        "64:ff9b:1::/48",  # local-use NAT64
        "100::/64",  # discard
        "2001::/32",  # Teredo
        "2001:db8::/32",  # documentation
        "2002::/16",  # 6to4
        "fc00::/7",  # unique local
        "fe80::/10",  # link-local
        "fec0::/10",  # site-local (deprecated)
        "ff00::/8",  # multicast
    )
)


class PolicyError(ValueError):
    """A policy rule that cannot be parsed."""


def embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address that reaches the wire for mapped/compatible/NAT64/6to4/Teredo forms."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address.teredo is not None:
        return address.teredo[1]
    packed = address.packed
    if address in ipaddress.IPv6Network("64:ff9b::/96") or address in ipaddress.IPv6Network(
        "::/96"
    ):
        return ipaddress.IPv4Address(packed[12:])
    return None


def normalize(address: IPAddress) -> IPAddress:
    """IPv4-mapped IPv6 is the IPv4 address (that is what the socket connects to)."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def is_special(address: IPAddress) -> bool:
    """Loopback, private, link-local, CGNAT, multicast, reserved... (any embedded IPv4 too)."""
    address = normalize(address)
    if isinstance(address, ipaddress.IPv4Address):
        return any(address in net for net in SPECIAL_V4)
    inner = embedded_ipv4(address)
    if inner is not None and is_special(inner):
        return True
    return any(address in net for net in SPECIAL_V6)


def _inside_special(network: IPNetwork) -> bool:
    blocks: Sequence[IPNetwork] = SPECIAL_V4 if network.version == 4 else SPECIAL_V6
    return any(network.subnet_of(block) for block in blocks)  # type: ignore[arg-type]


@attrs.frozen
class Rule:
    action: Literal["allow", "deny"]
    network: IPNetwork | None
    """None means any address (``*``)."""
    ports: tuple[int, int]
    text: str

    @property
    def opens_special(self) -> bool:
        return self.network is not None and _inside_special(self.network)

    def matches_port(self, port: int) -> bool:
        return self.ports[0] <= port <= self.ports[1]

    def matches(self, address: IPAddress, port: int, special: bool) -> bool:
        if not self.matches_port(port):
            return False
        if self.network is None:
            return not (special and self.action == "allow")
        if self.network.version != address.version or address not in self.network:
            return False
        return not (special and self.action == "allow" and not self.opens_special)


def parse_rule(text: str) -> Rule:
    """``"allow|deny NETWORK:PORTS"``; raises PolicyError naming what is wrong."""
    parts = text.split()
    if len(parts) != 2 or parts[0] not in ("allow", "deny"):
        raise PolicyError(f"policy rule {text!r} must be 'allow|deny NETWORK:PORTS'")
    action, target = parts
    where, colon, ports_text = target.rpartition(":")
    if not colon or not where:
        raise PolicyError(f"policy rule {text!r}: expected NETWORK:PORTS, e.g. '*:443'")
    network: IPNetwork | None
    if where == "*":
        network = None
    else:
        bare = where.replace("[", "").replace("]", "")
        try:
            network = ipaddress.ip_network(bare, strict=False)
        except ValueError:
            raise PolicyError(f"policy rule {text!r}: {where!r} is not '*' or a network") from None
    if ports_text == "*":
        ports = (0, 65535)
    else:
        low, dash, high = ports_text.partition("-")
        try:
            ports = (int(low), int(high if dash else low))
        except ValueError:
            raise PolicyError(
                f"policy rule {text!r}: ports {ports_text!r} are not '*', N or N-M"
            ) from None
        if not 0 <= ports[0] <= ports[1] <= 65535:
            raise PolicyError(f"policy rule {text!r}: ports must be 0-65535 and low <= high")
    return Rule(action, network, ports, text)  # type: ignore[arg-type]


@attrs.frozen
class Decision:
    allowed: bool
    reason: str


@attrs.frozen
class ExitPolicy:
    rules: tuple[Rule, ...]

    @classmethod
    def parse(cls, texts: Iterable[str]) -> ExitPolicy:
        return cls(tuple(parse_rule(t) for t in texts))

    def check(self, address: IPAddress, port: int) -> Decision:
        address = normalize(address)
        special = is_special(address)
        for rule in self.rules:
            if rule.matches(address, port, special):
                return Decision(rule.action == "allow", f"rule {rule.text!r}")
        if special:
            return Decision(False, f"{address} is special-purpose (private/loopback/...) space")
        return Decision(False, "no rule matches")

    def check_all(self, addresses: Iterable[IPAddress], port: int) -> Decision:
        """Allowed only if every address is: a name with one private address is refused."""
        last = Decision(False, "no address")
        for address in addresses:
            last = self.check(address, port)
            if not last.allowed:
                return Decision(False, f"{address}: {last.reason}")
        return last

    def may_allow_port(self, port: int) -> bool:
        """Could a public address on ``port`` be allowed? (For names, before resolution.)"""
        for rule in self.rules:
            if rule.matches_port(port) and (rule.network is None or not rule.opens_special):
                if rule.network is None:
                    return rule.action == "allow"
                if rule.action == "allow":
                    return True
        return False

    def summary(self) -> list[str]:
        return [rule.text for rule in self.rules]


DEFAULT_POLICY = ("allow *:*",)
