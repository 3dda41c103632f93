"""The persistent replay window, alone and guarding PINGs on a live connection."""

from __future__ import annotations

import time

import pytest
import trio

from zeone.identity import Identity
from zeone.net.memory import MemoryTransport
from zeone.net.noise import Hello, secure_dial
from zeone.net.transport import parse_address
from zeone.replay import ReplayGuard, ReplayRejected
from zeone.testing import open_network
from zeone.wire.frame import Frame, FrameDecoder, MessageType, encode_frame


class FakeClock:
    """A settable wall clock, so expiry is tested without waiting."""

    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


def test_fresh_accepted_replay_rejected_and_scoped_per_sender(tmp_path) -> None:
    clock = FakeClock()
    guard = ReplayGuard(tmp_path / "r.sqlite3", window=30, clock=clock)
    guard.check(b"alice", b"n1", clock.now)
    with pytest.raises(ReplayRejected, match="replay"):
        guard.check(b"alice", b"n1", clock.now)
    guard.check(b"bob", b"n1", clock.now)  # another sender's nonce space


@pytest.mark.parametrize(("offset", "word"), [(-31, "old"), (31, "future")])
def test_timestamps_outside_the_window_are_rejected(tmp_path, offset, word) -> None:
    clock = FakeClock()
    guard = ReplayGuard(tmp_path / "r.sqlite3", window=30, clock=clock)
    with pytest.raises(ReplayRejected, match=word):
        guard.check(b"alice", b"n", clock.now + offset)


def test_the_window_survives_a_restart(tmp_path) -> None:
    clock = FakeClock()
    guard = ReplayGuard(tmp_path / "r.sqlite3", window=30, clock=clock)
    guard.check(b"alice", b"n1", clock.now)
    guard.close()
    restarted = ReplayGuard(tmp_path / "r.sqlite3", window=30, clock=clock)
    with pytest.raises(ReplayRejected, match="replay"):
        restarted.check(b"alice", b"n1", clock.now)


def test_a_nonce_is_forgotten_only_once_its_timestamp_is_outside_the_window(tmp_path) -> None:
    clock = FakeClock()
    guard = ReplayGuard(None, window=30, clock=clock)
    sent = clock.now
    guard.check(b"alice", b"n1", sent)
    clock.now += 29
    with pytest.raises(ReplayRejected, match="replay"):
        guard.check(b"alice", b"n1", sent)
    clock.now += 2  # the original timestamp is now too old anyway
    with pytest.raises(ReplayRejected, match="old"):
        guard.check(b"alice", b"n1", sent)
    # the same nonce with a fresh timestamp is a new message
    guard.check(b"alice", b"n1", clock.now)


async def test_a_replayed_ping_gets_no_pong(tmp_path, autojump_clock) -> None:
    async with open_network(2, data_root=tmp_path) as net:
        victim, honest = net.nodes
        stream = await MemoryTransport(net.memory, name="x").dial(
            parse_address(victim.network.listen_addresses[0])
        )
        channel = await secure_dial(stream, Identity.generate(), Hello(), victim.node_id)
        ping = encode_frame(Frame(MessageType.PING, [b"0123456789abcdef", int(time.time() * 1000)]))
        stale = encode_frame(Frame(MessageType.PING, [b"fedcba9876543210", 1000]))
        decoder = FrameDecoder()
        pongs = []
        for frame_bytes in (ping, ping, stale, ping):
            await channel.send_all(frame_bytes)
        with trio.move_on_after(5):
            while True:
                pongs.extend(decoder.feed(await channel.receive_some()))
        assert [f.type for f in pongs] == [MessageType.PONG]
        conn = next(iter(victim.network.connections.values()))
        assert conn.stats.replays == 3
        # the connection stays up and honest pings work
        _, rtt = await honest.rpc.ping(victim.node_id)
        assert rtt >= 0
