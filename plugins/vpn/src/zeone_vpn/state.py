"""Per-node VPN state (several nodes can share one process in tests)."""

from __future__ import annotations

from typing import Any

import attrs

from zeone_vpn.metering import Meter


@attrs.define(eq=False)
class VpnState:
    meter: Meter = attrs.Factory(Meter)
    exit: Any = None
    """The ExitNode, on nodes with ``exit = true``."""
    relay: Any = None
    """The Relay, on nodes with ``relay = true``."""
    directory: Any = None
    """The ExitDirectory, on nodes with ``entry = true``."""
    socks: Any = None
    """The SocksServer, on nodes with ``entry = true``."""


def state(node: Any) -> VpnState:
    return node.plugin_state.setdefault("vpn", VpnState())
