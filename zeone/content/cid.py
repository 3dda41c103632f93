"""Content ids: the hash of a manifest's canonical encoding, and their text form.

Text form: ``z`` followed by the 32-byte digest in lowercase RFC 4648 base32 without padding
(53 characters). Base32 is case-insensitive and safe in URLs, file names and DNS labels; the prefix
leaves room for other id kinds later.
"""

from __future__ import annotations

import base64
import binascii

import attrs

from zeone.content.errors import ContentError
from zeone.content.hashing import HASH_BYTES

PREFIX = "z"
TEXT_LENGTH = len(PREFIX) + 52


def _check_digest(_instance: object, _attribute: attrs.Attribute, value: bytes) -> None:
    if type(value) is not bytes or len(value) != HASH_BYTES:
        raise ContentError(f"a content id is {HASH_BYTES} bytes")


@attrs.frozen(order=True)
class ContentId:
    """The id of a piece of content: SHA-256 over its manifest (see `Manifest.content_id`)."""

    digest: bytes = attrs.field(validator=_check_digest)

    @classmethod
    def parse(cls, text: str) -> ContentId:
        """Parse the text form; raises ContentError saying what is wrong."""
        if not isinstance(text, str):
            raise ContentError("a content id must be a string")
        text = text.strip()
        if not text.startswith(PREFIX):
            raise ContentError(f"content id {text[:60]!r} does not start with {PREFIX!r}")
        if len(text) != TEXT_LENGTH:
            raise ContentError(
                f"content id {text[:60]!r} has {len(text)} characters, expected {TEXT_LENGTH}"
            )
        body = text[len(PREFIX) :].upper()
        try:
            digest = base64.b32decode(body + "====")
        except (binascii.Error, ValueError):
            raise ContentError(f"content id {text!r} is not valid base32") from None
        cid = cls(digest)
        if str(cid) != text.lower():  # non-zero padding bits: refuse aliases of the same id
            raise ContentError(f"content id {text!r} is not in canonical form")
        return cid

    @classmethod
    def from_bytes(cls, raw: object) -> ContentId:
        """From the 32 raw bytes (as carried on the wire); raises ContentError."""
        if type(raw) is not bytes:
            raise ContentError("a content id on the wire is a byte string")
        return cls(raw)

    def __str__(self) -> str:
        return PREFIX + base64.b32encode(self.digest).decode().rstrip("=").lower()

    def __repr__(self) -> str:
        return f"ContentId({self})"

    def short(self) -> str:
        return str(self)[:12]
