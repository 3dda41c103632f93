"""Forum records: signed, content-addressed, validated strictly before anything else sees them.

Every forum object (a thread's metadata, a post, a vote, a tombstone, an edit, a profile) is one
`ForumRecord`: `[version, kind, author, created, slot, body, nonce, signature]` in canonical
CBOR. The author signs everything but the signature behind a domain-separation prefix, so a forum
signature can never be replayed as a DHT record or a handshake. The record's id is BLAKE2b-256
of its wire bytes, so ids are content hashes: two nodes that hold the same id hold the same bytes,
and a replayed record is just a duplicate.

`nonce` is a small proof of work (hashcash over the unsigned content, found before signing) that
makes floods cost CPU; the required difficulty is a node setting (`pow_bits`).

Bodies are structured with cattrs into frozen attrs classes through a converter that refuses any
type coercion and unknown keys: untrusted bytes never become a half-valid object.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence
from typing import Any, ClassVar, Literal

import attrs
import cattrs
import cbor2
from attrs import validators as v
from cattrs.errors import ClassValidationError, ForbiddenExtraKeysError

from zeone.errors import ProtocolError
from zeone.identity import Identity, NodeId, verify_signature
from zeone.wire.frame import decode_cbor, encode_cbor
from zeone_forum import ring

VERSION = 1
SIGN_CONTEXT = b"zeone/forum-record/v1\x00"
POW_CONTEXT = b"zeone/forum-pow/v1\x00"
ID_BYTES = 32
MAX_RECORD_BYTES = 64 * 1024
"""No record is larger on the wire; a post's content limit (`max_post_bytes`) is lower."""
DEFAULT_MAX_POST_BYTES = 16 * 1024
MAX_TITLE = 200
MAX_TAGS = 8
MAX_TAG = 32
MAX_ATTACHMENTS = 16
MAX_CONTENT_ID = 64
MAX_CLOCK_SKEW_MS = 300_000
"""A record created further ahead of our clock is refused (it would dodge rate limits)."""

Kind = Literal["thread", "post", "vote", "tombstone", "edit", "profile"]
KINDS: tuple[str, ...] = ("thread", "post", "vote", "tombstone", "edit", "profile")


class InvalidForumRecord(ValueError):
    """A record breaks a rule; the message says which."""


def _id_bytes(_instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    if type(value) is not bytes or len(value) != ID_BYTES:
        raise ValueError(f"{attribute.name} must be a {ID_BYTES}-byte id")


def _opt_id(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    if value is not None:
        _id_bytes(instance, attribute, value)


def _text(low: int, high: int) -> list[Any]:
    return [v.instance_of(str), v.min_len(low), v.max_len(high)]


def _tags(_instance: Any, _attribute: attrs.Attribute, value: tuple[str, ...]) -> None:
    if len(value) > MAX_TAGS:
        raise ValueError(f"at most {MAX_TAGS} tags")
    for tag in value:
        if not 0 < len(tag) <= MAX_TAG or not tag.strip():
            raise ValueError(f"a tag is 1-{MAX_TAG} visible characters")


def _attachments(_instance: Any, _attribute: attrs.Attribute, value: tuple[bytes, ...]) -> None:
    if len(value) > MAX_ATTACHMENTS:
        raise ValueError(f"at most {MAX_ATTACHMENTS} attachments")
    for item in value:
        if not 0 < len(item) <= MAX_CONTENT_ID:
            raise ValueError(f"an attachment is a content id of 1-{MAX_CONTENT_ID} bytes")


@attrs.frozen
class ThreadBody:
    """Thread metadata (seed 004 §4.2); the opening text is the thread's first post."""

    title: str = attrs.field(validator=_text(1, MAX_TITLE))
    category: str = attrs.field(default="general", validator=_text(1, 64))
    tags: tuple[str, ...] = attrs.field(default=(), validator=_tags)


def _point(_instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    if type(value) is not bytes or len(value) != 32:
        raise ValueError(f"{attribute.name} must be 32 bytes")


def _points(_instance: Any, attribute: attrs.Attribute, value: tuple[bytes, ...]) -> None:
    if not 2 <= len(value) <= ring.MAX_RING or any(len(x) != 32 for x in value):
        raise ValueError(f"{attribute.name} holds 2-{ring.MAX_RING} 32-byte values")


@attrs.frozen
class AnonSig:
    """A linkable ring signature (`ring.py`) standing in for the author: the envelope is signed
    by a one-time key, the ring signature says "one of these members wrote it"."""

    ring: tuple[bytes, ...] = attrs.field(validator=_points)
    image: bytes = attrs.field(validator=_point)
    c0: bytes = attrs.field(validator=_point)
    s: tuple[bytes, ...] = attrs.field(validator=_points)

    def signature(self) -> ring.RingSignature:
        return ring.RingSignature(self.ring, self.image, self.c0, self.s)


@attrs.frozen
class PostBody:
    thread: bytes = attrs.field(validator=_id_bytes)
    content: str = attrs.field(validator=_text(1, MAX_RECORD_BYTES))
    parent: bytes | None = attrs.field(default=None, validator=_opt_id)
    content_type: Literal["text/markdown"] = "text/markdown"
    attachments: tuple[bytes, ...] = attrs.field(default=(), validator=_attachments)
    anon: AnonSig | None = None


@attrs.frozen
class VoteBody:
    """One vote per (author, target); the author's latest vote counts. `value` 0 withdraws."""

    thread: bytes = attrs.field(validator=_id_bytes)
    target: bytes = attrs.field(validator=_id_bytes)
    value: int = attrs.field(validator=v.in_((-1, 0, 1)))
    reaction: str = attrs.field(default="", validator=_text(0, 16))
    anon: AnonSig | None = None


@attrs.frozen
class TombstoneBody:
    """The author deletes `target` (a post or the thread itself) everywhere."""

    thread: bytes = attrs.field(validator=_id_bytes)
    target: bytes = attrs.field(validator=_id_bytes)


@attrs.frozen
class EditBody:
    """A signed superseding content for the author's own post; the latest edit wins."""

    thread: bytes = attrs.field(validator=_id_bytes)
    target: bytes = attrs.field(validator=_id_bytes)
    content: str = attrs.field(validator=_text(1, MAX_RECORD_BYTES))


@attrs.frozen
class ProfileBody:
    nick: str = attrs.field(validator=_text(1, 32))
    about: str = attrs.field(default="", validator=_text(0, 512))


BODY_TYPES: dict[str, type] = {
    "thread": ThreadBody,
    "post": PostBody,
    "vote": VoteBody,
    "tombstone": TombstoneBody,
    "edit": EditBody,
    "profile": ProfileBody,
}


def _strict(kind: type) -> Any:
    def structure(value: Any, _type: Any) -> Any:
        if type(value) is not kind:
            raise TypeError(f"expected {kind.__name__}, got {type(value).__name__}")
        return value

    return structure


def _make_converter() -> cattrs.Converter:
    converter = cattrs.Converter(forbid_extra_keys=True)
    for kind in (str, bytes, int):
        converter.register_structure_hook(kind, _strict(kind))
    return converter


_converter = _make_converter()


def _unstructure(body: Any) -> dict[str, Any]:
    data = attrs.asdict(body, recurse=False)
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, AnonSig):
            value = _unstructure(value)
        out[key] = list(value) if isinstance(value, tuple) else value
    if out.get("anon", 0) is None:
        del out["anon"]  # absent, not null: the wire of ordinary records stays as it was
    return out


def ring_message(kind: str, author: bytes, created: int, data: dict[str, Any]) -> bytes:
    """What a ring signature signs: the record's content without the signature itself, bound
    to the one-time envelope key (so it cannot be lifted onto another record)."""
    rest = {k: x for k, x in data.items() if k != "anon"}
    return encode_cbor(["zeone/forum-anon/v1", kind, author, created, rest])


def structure_body(kind: str, data: Any) -> Any:
    """Untrusted map -> body object; raises InvalidForumRecord naming the bad field."""
    body_type = BODY_TYPES.get(kind) if type(kind) is str else None
    if body_type is None:
        raise InvalidForumRecord(f"unknown record kind {kind!r}")
    if not isinstance(data, dict):
        raise InvalidForumRecord(f"{kind} body must be a map")
    try:
        return _converter.structure(data, body_type)
    except ForbiddenExtraKeysError as exc:
        raise InvalidForumRecord(
            f"{kind} body has unknown keys {sorted(exc.extra_fields)}"
        ) from None
    except ClassValidationError as exc:
        reasons = "; ".join(_flatten(exc))
        raise InvalidForumRecord(f"bad {kind} body: {reasons}") from None
    except (TypeError, ValueError, KeyError) as exc:
        raise InvalidForumRecord(f"bad {kind} body: {exc}") from None


def _flatten(group: BaseException) -> list[str]:
    if isinstance(group, BaseExceptionGroup):
        out: list[str] = []
        for exc in group.exceptions:
            out.extend(_flatten(exc))
        return out
    notes = getattr(group, "__notes__", [])
    return [f"{notes[0] if notes else ''} {type(group).__name__}: {group}".strip()]


def _dumps(value: Any) -> bytes:
    return cbor2.dumps(value, canonical=True)


def pow_digest(content: bytes, nonce: int) -> bytes:
    return hashlib.blake2b(
        POW_CONTEXT + content + nonce.to_bytes(8, "big"), digest_size=32
    ).digest()


def leading_zero_bits(digest: bytes) -> int:
    value = int.from_bytes(digest, "big")
    return len(digest) * 8 - value.bit_length()


def solve_pow(content: bytes, bits: int) -> int:
    """The first nonce whose digest has `bits` leading zero bits (2**bits tries on average)."""
    nonce = 0
    while leading_zero_bits(pow_digest(content, nonce)) < bits:
        nonce += 1
    return nonce


@attrs.frozen(slots=True, repr=False)
class ForumRecord:
    """A verified-shape record. Make new ones with `create`; decode peers' with `decode`."""

    kind: str
    author: bytes
    created: int
    slot: int
    """The record's index among its author's records in the same rate window (see store)."""
    body: Any
    nonce: int
    signature: bytes
    wire: bytes = attrs.field(eq=False)
    id: bytes = attrs.field(eq=False)
    work: int = attrs.field(eq=False)
    """Leading zero bits of the proof-of-work digest."""

    SIGNED_KINDS: ClassVar[tuple[str, ...]] = KINDS

    def __repr__(self) -> str:
        return f"ForumRecord({self.kind} {self.id.hex()[:12]} by {self.author_id.short()})"

    @property
    def author_id(self) -> NodeId:
        return NodeId.from_public_key(self.author)

    @property
    def thread(self) -> bytes | None:
        """The thread this record belongs to (a thread record belongs to itself)."""
        if self.kind == "thread":
            return self.id
        return getattr(self.body, "thread", None)

    @property
    def anon(self) -> AnonSig | None:
        return getattr(self.body, "anon", None)

    @property
    def rate_key(self) -> bytes:
        """Whose rate limit a record counts against: the author, or for an anonymous record
        the member behind it (its key image, stable within the thread)."""
        anon = self.anon
        return anon.image if anon is not None else self.author

    @property
    def target(self) -> bytes | None:
        return getattr(self.body, "target", None)

    @staticmethod
    def _content(kind: str, author: bytes, created: int, slot: int, body: dict[str, Any]) -> bytes:
        return _dumps([VERSION, kind, author, created, slot, body])

    @classmethod
    def create(
        cls,
        identity: Identity,
        body: Any,
        *,
        pow_bits: int = 0,
        created: int | None = None,
        slot: int = 0,
        anon_ring: Sequence[bytes] | None = None,
    ) -> ForumRecord:
        """Sign as `identity`; with `anon_ring` (member keys including ours), sign anonymously:
        a fresh one-time key signs the envelope and a ring signature scoped to the thread
        proves membership."""
        kind = next(k for k, t in BODY_TYPES.items() if isinstance(body, t))
        created = int(time.time() * 1000) if created is None else created
        if anon_ring is not None:
            member, identity = identity, Identity.generate()
            plain = _unstructure(body)
            message = ring_message(kind, identity.public_key, created, plain)
            sig = ring.sign(message, anon_ring, member.signing_key, body.thread)
            body = attrs.evolve(body, anon=AnonSig(sig.ring, sig.image, sig.c0, sig.s))
        data = _unstructure(body)
        author = identity.public_key
        content = cls._content(kind, author, created, slot, data)
        nonce = solve_pow(content, pow_bits)
        signature = identity.sign(SIGN_CONTEXT + encode_cbor([content, nonce]))
        wire = encode_cbor([VERSION, kind, author, created, slot, data, nonce, signature])
        return cls.decode(wire)

    @classmethod
    def decode(cls, wire: Any) -> ForumRecord:
        """Parse and check shape, body, signature; raises InvalidForumRecord.

        Checks that need context (proof-of-work difficulty, clock, thread existence, authorship of
        a target) are the store's, in `ForumStore.check`.
        """
        if type(wire) is not bytes:
            raise InvalidForumRecord("a record is CBOR bytes")
        if len(wire) > MAX_RECORD_BYTES:
            raise InvalidForumRecord(f"record is {len(wire)} bytes; at most {MAX_RECORD_BYTES}")
        try:
            item = decode_cbor(wire)
        except ProtocolError as exc:
            raise InvalidForumRecord(str(exc)) from None
        if not isinstance(item, list) or len(item) != 8:
            raise InvalidForumRecord("a record is an array of 8 items")
        version, kind, author, created, slot, data, nonce, signature = item
        if version != VERSION or type(version) is not int:
            raise InvalidForumRecord(f"unsupported record version {version!r}")
        if type(author) is not bytes or len(author) != 32:
            raise InvalidForumRecord("author must be a 32-byte Ed25519 public key")
        if type(created) is not int or not 0 <= created < 2**53:
            raise InvalidForumRecord("created must be milliseconds since the epoch")
        if type(slot) is not int or not 0 <= slot < 2**16:
            raise InvalidForumRecord("slot must be an integer 0-65535")
        if type(nonce) is not int or not 0 <= nonce < 2**63:
            raise InvalidForumRecord("nonce must be a non-negative 63-bit integer")
        if type(signature) is not bytes or len(signature) != 64:
            raise InvalidForumRecord("signature must be 64 bytes")
        body = structure_body(kind, data)
        anon = getattr(body, "anon", None)
        if anon is not None:
            message = ring_message(kind, author, created, data)
            if not ring.verify(message, anon.signature(), body.thread):
                raise InvalidForumRecord("bad ring signature")
        content = cls._content(kind, author, created, slot, data)
        # `data` came out of the hostile-input decoder, so it is plain: plain cbor2 suffices.
        if _dumps([VERSION, kind, author, created, slot, data, nonce, signature]) != wire:
            raise InvalidForumRecord("record is not in canonical CBOR")
        if not verify_signature(author, SIGN_CONTEXT + _dumps([content, nonce]), signature):
            raise InvalidForumRecord("bad signature")
        record_id = hashlib.blake2b(wire, digest_size=ID_BYTES).digest()
        work = leading_zero_bits(pow_digest(content, nonce))
        return cls(kind, author, created, slot, body, nonce, signature, wire, record_id, work)
