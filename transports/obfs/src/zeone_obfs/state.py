"""The server's obfs state file: its node id and private key, created on first use.

Kept apart from the node's Ed25519 identity so that a bridge line can be rotated (delete the
file) without changing the node's identity, and so that the obfs identity reveals nothing about
the node's. The file is JSON, written atomically with mode 0600.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from zeone_obfs.handshake import NODE_ID_LEN, ServerKeys


class StateError(ValueError):
    """The state file exists but cannot be used; the message names the file and the problem."""


def load_or_create(path: Path) -> ServerKeys:
    if path.exists():
        return load(path)
    keys = ServerKeys.generate()
    save(path, keys)
    return keys


def load(path: Path) -> ServerKeys:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise StateError(f"cannot read obfs state {path}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise StateError(f"obfs state {path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict) or set(data) != {"node_id", "private_key"}:
        raise StateError(f"obfs state {path} must be an object with node_id and private_key")
    try:
        node_id = bytes.fromhex(data["node_id"])
        private_key = bytes.fromhex(data["private_key"])
    except (TypeError, ValueError):
        raise StateError(f"obfs state {path}: node_id and private_key must be hex") from None
    if len(node_id) != NODE_ID_LEN or len(private_key) != 32:
        raise StateError(
            f"obfs state {path}: node_id must be {NODE_ID_LEN} bytes, private_key 32 bytes"
        )
    return ServerKeys.from_secrets(node_id, private_key)


def save(path: Path, keys: ServerKeys) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(
        {"node_id": keys.identity.node_id.hex(), "private_key": keys.private_key.hex()}, indent=2
    )
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, text.encode() + b"\n")
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
