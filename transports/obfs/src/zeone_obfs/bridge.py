"""Bridge lines: the out-of-band parameters a client needs to reach an obfs server.

An obfs address carries them in its query: ``obfs://198.51.100.7:4100?cert=<cert>&iat=<0|1|2>``.
``cert`` is the server's 20-byte node id followed by its 32-byte X25519 public key, in URL-safe
base64 without padding (70 characters); ``iat`` is the server's inter-arrival-time mode, which
the client mirrors for its own sends. Without the cert a server cannot be reached: it answers
nothing to a handshake that is not MACed with it.
"""

from __future__ import annotations

import base64
import binascii
import urllib.parse

import attrs

from zeone.net.transport import Address
from zeone_obfs.handshake import NODE_ID_LEN, ServerIdentity

CERT_LEN = NODE_ID_LEN + 32
IAT_MODES = (0, 1, 2)


def encode_cert(identity: ServerIdentity) -> str:
    raw = identity.node_id + identity.public_key
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cert(text: str) -> ServerIdentity:
    """Parse a cert; a ValueError says what is wrong with it."""
    cleaned = text.strip().replace("+", "-").replace("/", "_").rstrip("=")
    try:
        raw = base64.b64decode(cleaned + "=" * (-len(cleaned) % 4), altchars=b"-_", validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("the obfs cert is not base64") from None
    if len(raw) != CERT_LEN:
        raise ValueError(f"the obfs cert must decode to {CERT_LEN} bytes, not {len(raw)}")
    return ServerIdentity(raw[:NODE_ID_LEN], raw[NODE_ID_LEN:])


@attrs.frozen
class BridgeParams:
    """What the query of an obfs address says: the server's identity (if any) and iat mode."""

    server: ServerIdentity | None
    iat_mode: int = 0


def parse_params(address: Address) -> BridgeParams:
    """The bridge parameters of an obfs address; ValueError for a malformed query."""
    path, _, query = address.path.partition("?")
    if path not in ("", "/"):
        raise ValueError(f"obfs address {address} takes no path, only ?cert=...&iat=...")
    if "#" in query:
        raise ValueError(f"obfs address {address} must not have a fragment")
    try:
        pairs = urllib.parse.parse_qs(query, keep_blank_values=True, strict_parsing=bool(query))
    except ValueError:
        raise ValueError(f"obfs address {address} has a malformed query") from None
    unknown = set(pairs) - {"cert", "iat"}
    if unknown:
        raise ValueError(f"obfs address {address}: unknown parameter(s) {sorted(unknown)}")
    if any(len(values) > 1 for values in pairs.values()):
        raise ValueError(f"obfs address {address} repeats a parameter")
    server = decode_cert(pairs["cert"][0]) if "cert" in pairs else None
    iat_text = pairs.get("iat", ["0"])[0]
    if iat_text not in ("0", "1", "2"):
        raise ValueError(f"obfs address {address}: iat must be 0, 1 or 2, not {iat_text!r}")
    return BridgeParams(server, int(iat_text))


def bridge_query(identity: ServerIdentity, iat_mode: int) -> str:
    return f"?cert={encode_cert(identity)}&iat={iat_mode}"
