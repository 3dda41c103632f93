"""Node identity: an Ed25519 key pair and the 160-bit `NodeId` derived from its public key.

The NodeId is BLAKE2b-160 of the public key, so a peer cannot claim an id without holding the key
(the binding the Kademlia layer relies on). The key file is a small versioned text file written with
0600 permissions; a file that others can read or that does not parse is an error, never silently
replaced, because a regenerated key would be a different node.
"""

from __future__ import annotations

import base64
import hashlib
import os
import stat
from pathlib import Path

import attrs
import nacl.exceptions
import nacl.signing

from zeone.errors import IdentityError

NODE_ID_BYTES = 20
KEY_FILE_HEADER = "zeone-ed25519-secret-key-v1"


@attrs.frozen(order=True)
class NodeId:
    """A 160-bit node identifier. Its text form is 40 lowercase hex digits."""

    raw: bytes = attrs.field(repr=False)

    @raw.validator
    def _check_length(self, _attribute: attrs.Attribute, value: bytes) -> None:
        if not isinstance(value, bytes) or len(value) != NODE_ID_BYTES:
            raise ValueError(f"a NodeId is {NODE_ID_BYTES} bytes")

    @classmethod
    def from_public_key(cls, public_key: bytes) -> NodeId:
        return cls(hashlib.blake2b(public_key, digest_size=NODE_ID_BYTES).digest())

    @classmethod
    def parse(cls, text: str) -> NodeId:
        """Parse the 40-hex-digit form; raises ValueError naming what was wrong."""
        text = text.strip().lower()
        if len(text) != 2 * NODE_ID_BYTES:
            raise ValueError(f"a node id is {2 * NODE_ID_BYTES} hex digits, got {len(text)}")
        try:
            return cls(bytes.fromhex(text))
        except ValueError:
            raise ValueError(f"a node id is hex digits, got {text!r}") from None

    @property
    def int(self) -> int:
        return int.from_bytes(self.raw, "big")

    def distance(self, other: NodeId) -> int:
        """Kademlia XOR distance."""
        return self.int ^ other.int

    def short(self) -> str:
        """The first 8 hex digits: enough to tell peers apart in a table."""
        return self.raw.hex()[:8]

    def __str__(self) -> str:
        return self.raw.hex()

    def __repr__(self) -> str:
        return f"NodeId({self.raw.hex()})"


def verify_signature(public_key: bytes, message: bytes, signature: bytes) -> bool:
    """True if `signature` is `public_key`'s Ed25519 signature of `message`."""
    try:
        nacl.signing.VerifyKey(public_key).verify(message, signature)
    except (nacl.exceptions.BadSignatureError, nacl.exceptions.ValueError, TypeError):
        return False
    return True


@attrs.frozen
class Identity:
    """The node's signing key. `public_key` and `node_id` are what peers see."""

    signing_key: nacl.signing.SigningKey = attrs.field(repr=False)

    @classmethod
    def generate(cls) -> Identity:
        return cls(nacl.signing.SigningKey.generate())

    @classmethod
    def from_seed(cls, seed: bytes) -> Identity:
        """Deterministic identity from a 32-byte seed (tests and simulations)."""
        return cls(nacl.signing.SigningKey(seed))

    @property
    def public_key(self) -> bytes:
        return bytes(self.signing_key.verify_key)

    @property
    def node_id(self) -> NodeId:
        return NodeId.from_public_key(self.public_key)

    def sign(self, message: bytes) -> bytes:
        return self.signing_key.sign(message).signature

    # -- key file -------------------------------------------------------------------------------

    def save(self, path: Path) -> None:
        """Write the key file with 0600 permissions; refuses to overwrite an existing one."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        seed = base64.b64encode(bytes(self.signing_key)).decode()
        text = f"{KEY_FILE_HEADER}\n{seed}\n# node id {self.node_id}\n"
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            raise IdentityError(f"{path}: key file already exists; refusing to overwrite") from None
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())

    @classmethod
    def load(cls, path: Path) -> Identity:
        path = Path(path)
        try:
            st = path.stat()
        except FileNotFoundError:
            raise IdentityError(f"{path}: key file not found (run `zeone init`)") from None
        if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise IdentityError(
                f"{path}: key file is accessible by other users "
                f"(mode {stat.S_IMODE(st.st_mode):04o}); run `chmod 600 {path}`"
            )
        try:
            lines = path.read_text().splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise IdentityError(f"{path}: cannot read key file: {exc}") from None
        if len(lines) < 2 or lines[0] != KEY_FILE_HEADER:
            raise IdentityError(f"{path}: not a ZEONE key file (expected '{KEY_FILE_HEADER}')")
        try:
            seed = base64.b64decode(lines[1], validate=True)
        except ValueError:
            raise IdentityError(f"{path}: key file is corrupt (bad base64)") from None
        if len(seed) != 32:
            raise IdentityError(f"{path}: key file is corrupt (seed is {len(seed)} bytes, not 32)")
        return cls.from_seed(seed)

    @classmethod
    def load_or_create(cls, path: Path) -> Identity:
        """Load the key file, creating it only if it does not exist at all."""
        if Path(path).exists():
            return cls.load(path)
        identity = cls.generate()
        identity.save(path)
        return identity
