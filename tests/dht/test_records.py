"""Signed records, namespace validators and the selection rules."""

from __future__ import annotations

import itertools

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from zeone.dht.namespaces import (
    PeerInfo,
    Provider,
    ProviderInfo,
    peer_key,
    provider_key,
    service_key,
)
from zeone.dht.records import (
    MAX_TTL,
    SIGNATURE_CONTEXT,
    InvalidRecord,
    Namespace,
    Record,
    Validators,
    key_id,
)
from zeone.errors import ProtocolError
from zeone.identity import Identity
from zeone.wire.frame import decode_cbor, encode_cbor

NOW = 1_700_000_000.0
NOW_MS = int(NOW * 1000)
ALICE = Identity.from_seed(b"a" * 32)
BOB = Identity.from_seed(b"b" * 32)


def make(
    identity: Identity = ALICE,
    key: bytes = b"forum:thread1",
    value: bytes = b"hello",
    seq: int = 1,
    ttl: int = 3600,
    created: int = NOW_MS,
) -> Record:
    return Record.create(identity, key, value, seq, ttl, created=created)


@pytest.fixture
def validators() -> Validators:
    return Validators.default([Namespace(b"forum")])


# -- signing --------------------------------------------------------------------------------------


def test_create_verify_and_wire_round_trip() -> None:
    record = make()
    assert record.verify()
    assert record.publisher == ALICE.public_key
    assert record.publisher_id == ALICE.node_id
    assert record.namespace == b"forum"
    assert record.target == key_id(b"forum:thread1")
    again = Record.from_wire(decode_cbor(encode_cbor(record.to_wire())))
    assert again == record and again.verify()


@pytest.mark.parametrize(
    "change",
    [
        {"key": b"forum:thread2"},
        {"value": b"hellO"},
        {"publisher": BOB.public_key},
        {"seq": 2},
        {"created": NOW_MS + 1},
        {"ttl": 3601},
        {"signature": bytes(64)},
    ],
)
def test_any_tampering_breaks_the_signature(change: dict, validators: Validators) -> None:
    tampered = attrs.evolve(make(), **change)
    assert not tampered.verify()
    with pytest.raises(InvalidRecord, match="signature"):
        validators.check(tampered, NOW)


def test_signature_is_domain_separated() -> None:
    record = make()
    assert record.signing_bytes().startswith(SIGNATURE_CONTEXT)
    # A signature over the same fields without the context is not a record signature.
    bare = ALICE.sign(record.signing_bytes()[len(SIGNATURE_CONTEXT) :])
    assert not attrs.evolve(record, signature=bare).verify()


@pytest.mark.parametrize(
    "wire",
    [
        None,
        [],
        [b"k:x", b"v", b"p" * 32, 1, 1, 1],
        [b"", b"v", b"p" * 32, 1, 1, 1, b"s" * 64],
        [b"k" * 129, b"v", b"p" * 32, 1, 1, 1, b"s" * 64],
        [b"k:x", b"v" * (64 * 1024 + 1), b"p" * 32, 1, 1, 1, b"s" * 64],
        [b"k:x", b"v", b"p" * 31, 1, 1, 1, b"s" * 64],
        [b"k:x", b"v", b"p" * 32, -1, 1, 1, b"s" * 64],
        [b"k:x", b"v", b"p" * 32, 2**64, 1, 1, b"s" * 64],
        [b"k:x", b"v", b"p" * 32, True, 1, 1, b"s" * 64],
        [b"k:x", b"v", b"p" * 32, 1, 2**60, 1, b"s" * 64],
        [b"k:x", b"v", b"p" * 32, 1, 1, 0, b"s" * 64],
        [b"k:x", b"v", b"p" * 32, 1, 1, MAX_TTL + 1, b"s" * 64],
        [b"k:x", b"v", b"p" * 32, 1, 1, 1, b"s" * 63],
        ["k:x", b"v", b"p" * 32, 1, 1, 1, b"s" * 64],
        [b"k:x", b"v", b"p" * 32, 1.0, 1, 1, b"s" * 64],
    ],
)
def test_from_wire_rejects_malformed(wire: object) -> None:
    with pytest.raises(ProtocolError):
        Record.from_wire(wire)


plain = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**64), 2**64 - 1) | st.binary(max_size=40),
    lambda inner: st.lists(inner, max_size=8),
    max_leaves=20,
)


@settings(max_examples=200)
@given(value=st.lists(plain, min_size=0, max_size=8))
def test_from_wire_fuzz_raises_only_protocol_error(value: list) -> None:
    try:
        record = Record.from_wire(value)
    except ProtocolError:
        return
    assert not record.verify()


# -- validation -----------------------------------------------------------------------------------


def test_generic_checks(validators: Validators) -> None:
    assert validators.check(make(), NOW).name == b"forum"
    with pytest.raises(InvalidRecord, match="unknown namespace"):
        validators.check(make(key=b"nosuch:x"), NOW)
    with pytest.raises(InvalidRecord, match="unknown namespace"):
        validators.check(make(key=b"no-namespace"), NOW)
    with pytest.raises(InvalidRecord, match="future"):
        validators.check(make(created=NOW_MS + 301_000), NOW)
    validators.check(make(created=NOW_MS + 299_000), NOW)  # within the allowed skew
    with pytest.raises(InvalidRecord, match="expired"):
        validators.check(make(created=NOW_MS - 3_600_000), NOW)
    with pytest.raises(InvalidRecord, match="not a record"):
        validators.check("record", NOW)  # type: ignore[arg-type]
    short = Validators([Namespace(b"forum", max_ttl=60)])
    with pytest.raises(InvalidRecord, match="ttl"):
        short.check(make(), NOW)


def test_namespace_registry() -> None:
    validators = Validators.default()
    assert validators.namespace_for(b"forum:x") is None
    validators.register(Namespace(b"forum"))
    with pytest.raises(ValueError, match="already registered"):
        validators.register(Namespace(b"forum"))
    validators.register(Namespace(b"forum", multi_publisher=True), replace=True)
    assert validators.is_multi_publisher(b"forum:x")
    with pytest.raises(ValueError):
        Namespace(b"bad:name")

    def reject(record: Record) -> None:
        raise InvalidRecord("no " + record.value.decode())

    validators.register(Namespace(b"strict", reject))
    with pytest.raises(InvalidRecord, match="no way"):
        validators.check(make(key=b"strict:1", value=b"way"), NOW)


def test_peer_records_only_by_that_peer(validators: Validators) -> None:
    info = PeerInfo(("tcp://198.51.100.7:4001",), ("tcp",), ("/zeone/dht/1",), "seed")
    own = make(ALICE, peer_key(ALICE.node_id), info.to_value())
    validators.check(own, NOW)
    assert PeerInfo.from_value(own.value) == info
    with pytest.raises(InvalidRecord, match="only be published by that peer"):
        validators.check(make(BOB, peer_key(ALICE.node_id), info.to_value()), NOW)
    with pytest.raises(InvalidRecord, match="node id"):
        validators.check(make(ALICE, b"peer:short", info.to_value()), NOW)
    for bad_value in (b"\xff", encode_cbor([1]), encode_cbor({"role": "king"})):
        with pytest.raises(InvalidRecord):
            validators.check(make(ALICE, peer_key(ALICE.node_id), bad_value), NOW)
    bad_addresses = encode_cbor({"addresses": ["not an address"]})
    with pytest.raises(InvalidRecord):
        validators.check(make(ALICE, peer_key(ALICE.node_id), bad_addresses), NOW)
    assert PeerInfo(role="mobile").is_client and not PeerInfo(role="full").is_client


def test_provider_records(validators: Validators) -> None:
    info = ProviderInfo(("memory://alice",), {"price": 3})
    record = make(ALICE, provider_key(b"\x01" * 32), info.to_value())
    validators.check(record, NOW)
    provider = Provider.from_record(record)
    assert provider.contact.node_id == ALICE.node_id
    assert provider.info == info
    validators.check(make(BOB, service_key("vpn_exit"), ProviderInfo().to_value()), NOW)
    with pytest.raises(InvalidRecord, match="resource id"):
        validators.check(make(ALICE, b"provider:", info.to_value()), NOW)
    with pytest.raises(InvalidRecord):
        validators.check(make(ALICE, b"provider:x", encode_cbor({"meta": [1]})), NOW)
    with pytest.raises(ValueError):
        ProviderInfo(meta={"blob": b"x" * 5000})
    padded = encode_cbor({"addresses": [], "future-field": b"x" * 9000})
    with pytest.raises(InvalidRecord, match="larger"):
        validators.check(make(ALICE, b"provider:x", padded), NOW)


# -- selection ------------------------------------------------------------------------------------


def test_newer_seq_wins_and_stale_or_conflicting_is_refused(validators: Validators) -> None:
    stored = make(seq=5)
    newer = validators.select([stored], make(seq=6))
    assert newer.accept and newer.replaces == stored
    stale = validators.select([stored], make(seq=4))
    assert not stale.accept and "stale" in stale.reason
    same = validators.select([stored], stored)
    assert same.accept and same.duplicate
    conflict = validators.select([stored], make(seq=5, value=b"other"))
    assert not conflict.accept and "conflicting" in conflict.reason


def test_single_publisher_key_is_owned_by_its_first_publisher(validators: Validators) -> None:
    first = make(ALICE)
    assert validators.select([], first).accept
    squat = validators.select([first], make(BOB, seq=99))
    assert not squat.accept and "owned" in squat.reason


def test_provider_keys_take_many_publishers_one_record_each() -> None:
    validators = Validators.default()
    key = provider_key(b"content")
    value = ProviderInfo().to_value()
    alice = make(ALICE, key, value, seq=1)
    bob = make(BOB, key, value, seq=1)
    assert validators.select([alice], bob).accept
    assert validators.select([alice, bob], make(BOB, key, value, seq=2)).replaces == bob
    assert not validators.select([alice, bob], make(ALICE, key, value, seq=0)).accept
    small = Validators([Namespace(b"provider", multi_publisher=True, max_publishers=1)])
    assert not small.select([alice], bob).accept


def test_merge_picks_newest_per_publisher_and_one_owner() -> None:
    validators = Validators.default([Namespace(b"forum")])
    old, new = make(seq=1), make(seq=2, created=NOW_MS + 5)
    assert validators.merge([old, new]) == validators.merge([new, old]) == [new]
    # Replicas may disagree about who owns a single-publisher key: every reader picks the same
    # single record whatever order the answers came in.
    squatter = make(BOB, created=NOW_MS + 1)
    outcomes = {
        tuple(validators.merge(order)) for order in itertools.permutations([old, new, squatter])
    }
    assert len(outcomes) == 1 and len(outcomes.pop()) == 1
    key = provider_key(b"c")
    a = make(ALICE, key, ProviderInfo().to_value(), created=NOW_MS)
    b = make(BOB, key, ProviderInfo().to_value(), created=NOW_MS + 10)
    assert validators.merge([a, b]) == [b, a]  # freshest provider first
    assert validators.merge([]) == []
