"""Hostile bytes at a live node, before and after the handshake: the node drops that connection
and keeps serving a well-behaved peer throughout (asserted in the same run)."""

from __future__ import annotations

import contextlib
import struct

import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from zeone.identity import Identity
from zeone.net.memory import MemoryTransport
from zeone.net.noise import Hello, secure_dial
from zeone.net.transport import parse_address
from zeone.testing import open_network
from zeone.wire.frame import Frame, MessageType, encode_frame


async def _drain_until_closed(stream: trio.abc.Stream) -> None:
    """Read until the victim closes (EOF or reset); bounded by the caller's deadline."""
    try:
        while await stream.receive_some():
            pass
    except trio.BrokenResourceError:
        pass


def run_attack(attack, *, authenticate: bool) -> None:
    """Start victim + honest node, run ``attack(stream)``, then check the victim still serves."""

    async def main() -> None:
        async with open_network(2) as net:
            victim, honest = net.nodes
            await honest.network.connect(victim.node_id)
            transport = MemoryTransport(net.memory, name="attacker")
            stream = await transport.dial(parse_address(victim.network.listen_addresses[0]))
            if authenticate:
                stream = await secure_dial(stream, Identity.generate(), Hello(), victim.node_id)
            with trio.fail_after(60):
                with contextlib.suppress(trio.BrokenResourceError):  # hung up mid-attack: fine
                    await attack(stream)
                await _drain_until_closed(stream)
            # the victim dropped only the attacker and still answers the honest peer
            peer, _rtt = await honest.rpc.ping(victim.node_id)
            assert peer == victim.node_id
            assert set(victim.network.connections) == {honest.node_id}

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


_settings = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@_settings
@given(garbage=st.binary(min_size=1, max_size=4096))
def test_garbage_instead_of_a_handshake(garbage: bytes) -> None:
    async def attack(stream: trio.abc.Stream) -> None:
        await stream.send_all(garbage)
        await stream.send_eof()

    run_attack(attack, authenticate=False)


@_settings
@given(cut=st.integers(min_value=1, max_value=31))
def test_truncated_handshake(cut: int) -> None:
    async def attack(stream: trio.abc.Stream) -> None:
        # a Noise message 1 announces 32 bytes (its ephemeral key) and we send fewer
        await stream.send_all(struct.pack(">H", 32) + bytes(cut))
        await stream.send_eof()

    run_attack(attack, authenticate=False)


def test_a_silent_dialer_is_dropped_after_the_handshake_timeout() -> None:
    async def attack(stream: trio.abc.Stream) -> None:
        await trio.sleep_forever()  # cancelled by fail_after only if the victim never hangs up

    async def silent(stream: trio.abc.Stream) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(attack, stream)
            await _drain_until_closed(stream)
            nursery.cancel_scope.cancel()

    run_attack(silent, authenticate=False)


_frame_types = st.sampled_from(list(MessageType))
_cbor_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63)
    | st.binary(max_size=64)
    | st.text(max_size=64),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=8), children, max_size=5)
    ),
    max_leaves=20,
)


@_settings
@given(kind=_frame_types, payload=_cbor_values, tail=st.binary(max_size=64))
def test_well_framed_nonsense_after_the_handshake(kind, payload, tail) -> None:
    """Valid frames of every type carrying arbitrary payloads, then raw garbage."""

    async def attack(stream: trio.abc.Stream) -> None:
        await stream.send_all(encode_frame(Frame(kind, payload)) + tail)
        await stream.send_all(b"\xff" * 16)  # whatever the frame did, this is a bad header

    run_attack(attack, authenticate=True)


@_settings
@given(data=st.data())
def test_mutated_valid_frames(data) -> None:
    frame = bytearray(encode_frame(Frame(MessageType.SERVICE_REQUEST, [1, "/zeone/x/1", b"y"])))
    for _ in range(data.draw(st.integers(1, 4))):
        index = data.draw(st.integers(0, len(frame) - 1))
        frame[index] = data.draw(st.integers(0, 255))

    async def attack(stream: trio.abc.Stream) -> None:
        await stream.send_all(bytes(frame) + b"\x00" * 16)

    run_attack(attack, authenticate=True)
