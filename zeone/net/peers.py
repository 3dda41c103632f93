"""How a peer is named in config and on the command line: ``<node id>@<address>``."""

from __future__ import annotations

import attrs

from zeone.identity import NodeId
from zeone.net.transport import parse_address


@attrs.frozen
class PeerAddress:
    """``<node id>@<address>``, a bare ``<node id>`` (address from the address book), or a bare
    ``<address>`` (the id is then learned, not verified)."""

    address: str
    node_id: NodeId | None = None

    @classmethod
    def parse(cls, text: str) -> PeerAddress:
        node_part, sep, address = text.rpartition("@")
        if sep and node_part:
            node_id = NodeId.parse(node_part)
        elif "://" in text:
            node_id, address = None, text
        else:
            try:
                return cls("", NodeId.parse(text))
            except ValueError:
                raise ValueError(
                    f"expected <node id>, <node id>@<address> or <address>, got {text!r}"
                ) from None
        parse_address(address)
        return cls(address, node_id)

    def __str__(self) -> str:
        return f"{self.node_id}@{self.address}" if self.node_id else self.address
