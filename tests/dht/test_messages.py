"""The DHT frame payloads: round trips through the frame codec, and hostile payloads."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from zeone.dht.contact import Contact
from zeone.dht.messages import (
    DHT_MESSAGES,
    FindNode,
    FindNodeResponse,
    FindValue,
    FindValueResponse,
    Store,
    StoreResponse,
)
from zeone.dht.namespaces import PeerInfo, peer_key
from zeone.dht.records import Record
from zeone.dht.routing import node_id_from_int
from zeone.errors import ProtocolError
from zeone.identity import Identity
from zeone.wire.frame import Frame, FrameDecoder, MessageType, encode_frame

ALICE = Identity.from_seed(b"a" * 32)
RECORD = Record.create(ALICE, peer_key(ALICE.node_id), PeerInfo().to_value(), 1, 60, created=1)
CONTACTS = [Contact(node_id_from_int(i), (f"tcp://198.51.100.{i}:4001",)) for i in range(1, 4)]

MESSAGES = [
    FindNode(1, node_id_from_int(7)),
    FindNodeResponse(2, CONTACTS),
    FindNodeResponse(3, []),
    FindValue(4, b"peer:" + bytes(20)),
    FindValueResponse(5, [RECORD], []),
    FindValueResponse(6, [], CONTACTS),
    Store(7, RECORD),
    StoreResponse(8, True),
    StoreResponse(9, False, "key is owned by another publisher"),
]


@pytest.mark.parametrize("message", MESSAGES, ids=lambda m: type(m).__name__)
def test_round_trip_through_frames(message: object) -> None:
    frame = Frame(message.TYPE, message.to_wire())  # type: ignore[attr-defined]
    (decoded,) = FrameDecoder().feed(encode_frame(frame))
    assert DHT_MESSAGES[decoded.type].from_wire(decoded.payload) == message


def test_all_six_frame_types_are_covered() -> None:
    assert set(DHT_MESSAGES) == {
        MessageType.DHT_FIND_NODE,
        MessageType.DHT_FIND_NODE_RESP,
        MessageType.DHT_FIND_VALUE,
        MessageType.DHT_FIND_VALUE_RESP,
        MessageType.DHT_STORE,
        MessageType.DHT_STORE_RESP,
    }


@pytest.mark.parametrize(
    ("kind", "payload"),
    [
        (FindNode, [1]),
        (FindNode, [1, b"short"]),
        (FindNode, [-1, bytes(20)]),
        (FindNode, [True, bytes(20)]),
        (FindNode, [2**60, bytes(20)]),
        (FindNodeResponse, [1, [[b"x" * 20, []]] * 41]),
        (FindNodeResponse, [1, [[b"x" * 20, ["nonsense"]]]]),
        (FindNodeResponse, [1, {}]),
        (FindValue, [1, b""]),
        (FindValue, [1, b"k" * 129]),
        (FindValue, [1, "text"]),
        (FindValueResponse, [1, [], [], 0]),
        (FindValueResponse, [1, [[1, 2, 3]], []]),
        (FindValueResponse, [1, [RECORD.to_wire()] * 65, []]),
        (Store, [1, None]),
        (StoreResponse, [1, 1, ""]),
        (StoreResponse, [1, True, "x" * 257]),
        (StoreResponse, [1, True]),
    ],
)
def test_malformed_payloads_are_protocol_errors(kind: type, payload: object) -> None:
    with pytest.raises(ProtocolError):
        kind.from_wire(payload)


plain = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**64), 2**64 - 1) | st.binary(max_size=24),
    lambda inner: st.lists(inner, max_size=5),
    max_leaves=25,
)


@settings(max_examples=150)
@given(kind=st.sampled_from(sorted(DHT_MESSAGES.values(), key=str)), payload=plain)
def test_fuzzed_payloads_raise_only_protocol_error(kind: type, payload: object) -> None:
    with contextlib.suppress(ProtocolError):
        kind.from_wire(payload)
