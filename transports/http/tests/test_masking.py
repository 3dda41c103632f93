"""The fast masking and frame encoder agree with wsproto, the reference implementation."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from wsproto.connection import CLIENT, SERVER, Connection
from wsproto.events import BytesMessage
from zeone_http import masking


@given(data=st.binary(max_size=2000), key=st.binary(min_size=4, max_size=4))
def test_apply_mask_matches_wsproto_and_the_fallback(data: bytes, key: bytes) -> None:
    expected = bytes(masking.WSPROTO_MASKER(key).process(data))
    assert masking.apply_mask(data, key) == expected
    assert masking._apply_mask_python(data, key) == expected


@given(
    chunks=st.lists(st.binary(max_size=300), max_size=6),
    key=st.binary(min_size=4, max_size=4),
)
def test_the_fast_masker_continues_the_key_across_chunks_like_wsproto(chunks, key) -> None:
    ours, reference = masking.FastXorMasker(key), masking.WSPROTO_MASKER(key)
    for chunk in chunks:
        assert bytes(ours.process(chunk)) == bytes(reference.process(chunk))


@given(
    payload=st.one_of(
        st.binary(max_size=300),
        st.sampled_from([b"x" * 125, b"y" * 126, b"z" * 65535, b"w" * 65536, b"v" * 70000]),
    ),
    client=st.booleans(),
    split=st.integers(1, 5000),
)
def test_encoded_frames_decode_with_wsproto(payload: bytes, client: bool, split: int) -> None:
    frame = masking.encode_binary_frame(payload, client=client)
    receiver = Connection(SERVER if client else CLIENT)
    data = bytearray()
    finished = False
    split = max(split, len(frame) // 200)  # bounded work per example
    for start in range(0, len(frame), split):
        receiver.receive_data(frame[start : start + split])
        for event in receiver.events():
            assert isinstance(event, BytesMessage)
            data += event.data
            finished = event.message_finished
    assert bytes(data) == payload and finished
    assert (frame[1] & 0x80 != 0) == client  # clients mask, servers do not


def test_client_frames_use_a_fresh_key_each_time() -> None:
    keys = {masking.encode_binary_frame(b"same", client=True)[2:6] for _ in range(50)}
    assert len(keys) > 45


def test_the_decoder_is_accelerated_when_the_c_masker_is_available() -> None:
    import wsproto.frame_protocol

    assert masking.ACCELERATED  # websockets' binary wheel is a dependency
    assert wsproto.frame_protocol.XorMaskerSimple is masking.FastXorMasker
