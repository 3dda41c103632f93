"""The frame codec: round trips, arbitrary chunking, and hostile input of every kind."""

from __future__ import annotations

import contextlib
import datetime
import gc
import math
import uuid

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from zeone.errors import ProtocolError
from zeone.wire import (
    DEFAULT_MAX_FRAME_SIZE,
    HEADER_SIZE,
    MAX_NESTING_DEPTH,
    Frame,
    FrameDecoder,
    MessageType,
    decode_cbor,
    encode_cbor,
    encode_frame,
)
from zeone.wire.frame import HEADER, MAGIC

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**64), max_value=2**64 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=40)
    | st.binary(max_size=40)
)
keys = st.text(max_size=10) | st.binary(max_size=10)


def plain_values(depth: int = 4) -> st.SearchStrategy:
    """CBOR-safe values nested at most `depth` levels (well inside MAX_NESTING_DEPTH)."""
    if depth == 0:
        return scalars
    inner = plain_values(depth - 1)
    return scalars | st.lists(inner, max_size=5) | st.dictionaries(keys, inner, max_size=5)


frames = st.builds(Frame, st.sampled_from(MessageType), plain_values())


def raw_frame(payload: bytes, *, magic=MAGIC, version=1, code=0x01, length=None) -> bytes:
    return HEADER.pack(magic, version, code, len(payload) if length is None else length) + payload


def decode_payload(payload: bytes) -> list[Frame]:
    return FrameDecoder().feed(raw_frame(payload))


# -- layout and the message table -----------------------------------------------------------------


def test_header_layout():
    data = encode_frame(Frame(MessageType.PING, None))
    assert data == b"\x5a\x45\x01\x01\x00\x00\x00\x01\xf6"
    assert HEADER_SIZE == 8


def test_message_type_codes():
    expected = {
        "PING": 0x01, "PONG": 0x02, "DISCOVER": 0x03, "PEER_LIST": 0x04,
        "DHT_FIND_NODE": 0x10, "DHT_FIND_NODE_RESP": 0x11, "DHT_FIND_VALUE": 0x12,
        "DHT_FIND_VALUE_RESP": 0x13, "DHT_STORE": 0x14, "DHT_STORE_RESP": 0x15,
        "SERVICE_REQUEST": 0x20, "SERVICE_RESPONSE": 0x21,
        "VPN_CONNECT": 0x30, "VPN_DATA": 0x31, "VPN_CLOSE": 0x32,
        "CACHE_REQUEST": 0x40, "CACHE_RESPONSE": 0x41,
        "IOU": 0x50, "BALANCE_CLAIM": 0x51, "BALANCE_ACK": 0x52,
        "STREAM_OPEN": 0x60, "STREAM_DATA": 0x61, "STREAM_WINDOW": 0x62,
        "STREAM_CLOSE": 0x63, "STREAM_RESET": 0x64, "GOAWAY": 0x7F,
    }  # fmt: skip
    assert {t.name: t.value for t in MessageType} == expected


def test_frame_validates_type_and_version():
    assert Frame(0x01, None).type is MessageType.PING
    with pytest.raises(ValueError):
        Frame(0x99, None)
    with pytest.raises(ValueError):
        Frame(MessageType.PING, None, version=256)


# -- round trips ----------------------------------------------------------------------------------


@given(frames)
def test_roundtrip(frame):
    assert FrameDecoder().feed(encode_frame(frame)) == [frame]


@given(st.lists(frames, max_size=8), st.data())
def test_arbitrary_splits_decode_to_the_same_frames(frame_list, data):
    stream = b"".join(encode_frame(f) for f in frame_list)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=20)))
    decoder = FrameDecoder()
    decoded = []
    for start, end in zip([0, *cuts], [*cuts, len(stream)], strict=True):
        decoded += decoder.feed(stream[start:end])
    assert decoded == frame_list
    assert decoder.buffered == 0


def test_byte_at_a_time():
    frame_list = [Frame(t, {"i": i, "b": bytes(i)}) for i, t in enumerate(MessageType)]
    decoder = FrameDecoder()
    decoded = []
    for byte in b"".join(encode_frame(f) for f in frame_list):
        decoded += decoder.feed(bytes([byte]))
    assert decoded == frame_list


def test_large_frame_in_small_chunks():
    frame = Frame(
        MessageType.STREAM_DATA, {"data": bytes(range(256)) * (DEFAULT_MAX_FRAME_SIZE // 300)}
    )
    data = encode_frame(frame)
    decoder = FrameDecoder()
    decoded = []
    for i in range(0, len(data), 4096):
        decoded += decoder.feed(data[i : i + 4096])
        assert decoder.buffered <= len(data)
    assert decoded == [frame]


def test_tuples_encode_as_lists_and_nan_survives():
    [frame] = FrameDecoder().feed(
        encode_frame(Frame(MessageType.PONG, {"t": (1, 2), "x": math.nan}))
    )
    assert frame.payload["t"] == [1, 2]
    assert math.isnan(frame.payload["x"])


# -- hostile input --------------------------------------------------------------------------------


@given(st.binary(max_size=200))
def test_garbage_raises_only_protocol_error(garbage):
    with contextlib.suppress(ProtocolError):
        FrameDecoder().feed(garbage)


@settings(max_examples=500)
@given(st.binary(max_size=300))
def test_garbage_payload_behind_a_valid_header_raises_only_protocol_error(payload):
    try:
        [frame] = decode_payload(payload)
    except ProtocolError:
        return
    assert encode_cbor(frame.payload)  # whatever got through is plain data we could send back


@given(plain_values(), st.integers(0, 2**32 - 1))
def test_mutated_valid_payload_raises_only_protocol_error(value, seed):
    payload = bytearray(cbor2.dumps(value, canonical=True))
    payload[seed % len(payload)] ^= (seed >> 8) % 255 + 1
    with contextlib.suppress(ProtocolError):
        decode_payload(bytes(payload))


def test_oversized_length_rejected_before_the_payload_arrives():
    decoder = FrameDecoder()
    with pytest.raises(
        ProtocolError, match="frame of 99999999 bytes exceeds the 4194304-byte limit"
    ):
        decoder.feed(raw_frame(b"", length=99_999_999))
    small = FrameDecoder(max_frame_size=100)
    assert small.feed(raw_frame(b"\x00" * 0, length=100)) == []
    with pytest.raises(ProtocolError, match="frame of 101 bytes exceeds the 100-byte limit"):
        FrameDecoder(max_frame_size=100).feed(raw_frame(b"", length=101))


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (raw_frame(b"\xf6", magic=0x1234), "bad magic 0x1234"),
        (b"GET / HTTP/1.1\r\n", "bad magic 0x4745"),
        (b"\x12\x34", "bad magic 0x1234"),  # detected from the first two bytes
        (raw_frame(b"\xf6", version=7), r"unsupported frame version 7 \(supported: \[1\]\)"),
        (b"ZE\x02", "unsupported frame version 2"),
        (raw_frame(b"\xf6", code=0x99), "unknown message type 0x99"),
        (b"ZE\x01\x00", "unknown message type 0x00"),
    ],
)
def test_bad_header(data, message):
    with pytest.raises(ProtocolError, match=message):
        FrameDecoder().feed(data)


def test_supported_versions_are_configurable():
    decoder = FrameDecoder(supported_versions=frozenset({1, 2}))
    [frame] = decoder.feed(raw_frame(b"\xf6", version=2))
    assert frame.version == 2


def test_decoder_is_dead_after_an_error():
    decoder = FrameDecoder()
    with pytest.raises(ProtocolError):
        decoder.feed(b"\x00\x00")
    with pytest.raises(ProtocolError, match="dead after an earlier error: bad magic"):
        decoder.feed(encode_frame(Frame(MessageType.PING, None)))


@pytest.mark.parametrize(
    "value",
    [
        datetime.datetime.now(datetime.UTC),
        uuid.uuid4(),
        cbor2.CBORTag(2, b"\x01" * 9),  # bignum
        cbor2.CBORTag(35, "(a+)+$"),  # regex
        cbor2.CBORTag(258, [1, 2]),  # set
        cbor2.CBORTag(28, [1]),  # shared reference
        cbor2.CBORTag(30, [1, 3]),  # rational
        cbor2.CBORTag(4, [-2, 27315]),  # decimal
        cbor2.CBORTag(55799, 1),  # self-described CBOR
        cbor2.CBORTag(1000, 1),  # unknown tag
        cbor2.CBORTag(43000, 1),
        {"nested": [1, cbor2.CBORTag(1, 0)]},
    ],
)
def test_tags_rejected(value):
    with pytest.raises(ProtocolError, match="tag"):
        decode_payload(cbor2.dumps(value))


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b"\xf7", "UndefinedType"),
        (b"\xf0", "CBORSimpleValue"),
        (b"\x82\x01\xf8\xff", "CBORSimpleValue"),
        (b"\xa1\x01\x02", "map key"),  # int key
        (b"\xa1\x81\x01\x02", "map key"),  # array key
        (b"\xa2\x61a\x01\x61a\x02", "Duplicate"),
        (b"\x9f\x01\xff", "indefinite"),
        (b"\x01\x02", "1 bytes after the item"),
        (b"\x62\xff\xfe", "undecodable"),  # invalid UTF-8
        (b"", "undecodable"),
        (b"\x9b" + (2**40).to_bytes(8, "big"), "undecodable"),  # huge declared array
        (b"\x5b" + (2**40).to_bytes(8, "big"), "undecodable"),  # huge declared bytes
    ],
)
def test_non_plain_cbor_rejected(payload, message):
    with pytest.raises(ProtocolError, match=message):
        decode_payload(payload)


def test_nesting_depth_bound():
    ok = b"\x81" * MAX_NESTING_DEPTH + b"\x00"
    assert decode_payload(ok)[0].payload is not None
    with pytest.raises(ProtocolError, match="depth"):
        decode_payload(b"\x81" * (MAX_NESTING_DEPTH + 1) + b"\x00")
    with pytest.raises(ProtocolError, match="depth"):
        decode_payload(b"\x81" * 100_000 + b"\x00")


def test_decoding_restores_the_gc_state():
    assert gc.isenabled()
    decode_payload(b"\x80")
    with pytest.raises(ProtocolError):
        decode_payload(b"\xf7")
    assert gc.isenabled()
    gc.disable()
    try:
        decode_payload(b"\x80")
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_decode_cbor_direct():
    assert decode_cbor(cbor2.dumps({"a": [1, b"x", None]})) == {"a": [1, b"x", None]}
    with pytest.raises(ProtocolError):
        decode_cbor(cbor2.dumps([[1]]), max_depth=1)


# -- the encoder refuses what a peer would refuse -------------------------------------------------


@pytest.mark.parametrize(
    ("value", "error"),
    [
        ({1, 2}, TypeError),
        (memoryview(b"ab"), TypeError),
        (datetime.date(2024, 1, 1), TypeError),
        (object(), TypeError),
        ({1: "int key"}, TypeError),
        ({(1,): "tuple key"}, TypeError),
        (2**64, ValueError),
        (-(2**64) - 1, ValueError),
        ([[[1]]], ValueError),
    ],
)
def test_encode_rejects_what_decoding_would(value, error):
    with pytest.raises(error):
        encode_cbor(value, max_depth=2)


def test_encode_rejects_too_deep_and_oversized():
    deep: list = [0]
    for _ in range(MAX_NESTING_DEPTH):
        deep = [deep]
    with pytest.raises(ValueError, match="nested deeper"):
        encode_frame(Frame(MessageType.PING, deep))
    with pytest.raises(ValueError, match="exceeds the 100-byte limit"):
        encode_frame(Frame(MessageType.PING, b"x" * 100), max_frame_size=100)


@given(plain_values())
def test_encode_cbor_is_canonical(value):
    assert encode_cbor(value) == cbor2.dumps(value, canonical=True)
    assert decode_cbor(encode_cbor(value)) == value
