"""``[plugins.vpn]``: the typed settings of the VPN plugin."""

from __future__ import annotations

from typing import Any

import attrs
from attrs import validators as v

from zeone.config import parse_host_port
from zeone.identity import NodeId
from zeone_vpn.policy import DEFAULT_POLICY, PolicyError, parse_rule


def _bind(_instance: Any, attribute: attrs.Attribute, value: str) -> None:
    try:
        parse_host_port(value)
    except ValueError as exc:
        raise ValueError(f"{attribute.name}: {exc}") from None


def _rules(_instance: Any, attribute: attrs.Attribute, value: list[str]) -> None:
    for text in value:
        try:
            parse_rule(text)
        except PolicyError as exc:
            raise ValueError(str(exc)) from None


def _users(_instance: Any, attribute: attrs.Attribute, value: list[str]) -> None:
    for text in value:
        user, colon, password = text.partition(":")
        if not colon or not 0 < len(user.encode()) < 256 or not 0 < len(password.encode()) < 256:
            raise ValueError(f"users entries are 'name:password' (1-255 bytes each), got {text!r}")


def _node_ids(_instance: Any, attribute: attrs.Attribute, value: list[str]) -> None:
    for text in value:
        NodeId.parse(text)


@attrs.frozen
class VpnConfig:
    """``[plugins.vpn]``; see the plugin README for what each key does."""

    entry: bool = True
    socks_bind: str = attrs.field(default="127.0.0.1:1080", validator=_bind)
    users: list[str] = attrs.field(factory=list, validator=_users)
    isolate_by_auth: bool = True
    udp: bool = True
    exits: list[str] = attrs.field(factory=list, validator=_node_ids)
    hops: int = attrs.field(default=1, validator=[v.ge(1), v.le(2)])
    relay: bool = False
    exit: bool = False
    policy: list[str] = attrs.field(factory=lambda: list(DEFAULT_POLICY), validator=_rules)
    max_flows: int = attrs.field(default=4096, validator=v.ge(1))
    max_flows_per_client: int = attrs.field(default=256, validator=v.ge(1))
    bandwidth_per_client: int = attrs.field(default=0, validator=v.ge(0))
    connect_timeout: float = attrs.field(default=10.0, validator=v.gt(0))
    handshake_timeout: float = attrs.field(default=10.0, validator=v.gt(0))
    probe_interval: float = attrs.field(default=30.0, validator=v.gt(0))
    advertise_interval: float = attrs.field(default=600.0, validator=v.gt(0))
    usage_interval: float = attrs.field(default=10.0, validator=v.gt(0))
