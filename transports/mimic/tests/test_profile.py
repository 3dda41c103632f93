"""The server copies the cover site's handshake shape, so comparing the two shows no difference."""

from __future__ import annotations

import socket
import struct

import trio
from hypothesis import given, settings
from hypothesis import strategies as st
from mimic_cover import COVER_NAME
from zeone_mimic import auth, wire
from zeone_mimic.fallback import FallbackTarget
from zeone_mimic.handshake import client_handshake
from zeone_mimic.profile import ProfileError, ServerProfile, learn_profile, profile_from_records
from zeone_mimic.transport import MimicTransport

from zeone.net.transport import parse_address


def shape(raw: bytes) -> list[tuple[int, int]]:
    """(content type, length) of every record in `raw`."""
    out, pos = [], 0
    while pos + 5 <= len(raw):
        ctype, _version, length = struct.unpack_from(">BHH", raw, pos)
        out.append((ctype, length))
        pos += 5 + length
    return out


class Snoop(trio.abc.Stream):
    def __init__(self, inner: trio.abc.Stream) -> None:
        self.inner = inner
        self.received = bytearray()

    async def send_all(self, data) -> None:
        await self.inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes=None) -> bytes:
        data = await self.inner.receive_some(max_bytes)
        self.received += data
        return data

    async def aclose(self) -> None:
        await self.inner.aclose()


async def test_learned_profile_makes_our_flight_look_like_the_cover_sites(
    nursery, cover_site
) -> None:
    target = FallbackTarget("127.0.0.1", cover_site.port)
    with trio.fail_after(20):
        learned = await learn_profile(target, COVER_NAME)
    assert learned.source == f"learned from {target}"
    assert learned.group == wire.GROUP_X25519  # what this OpenSSL answers Chrome's hello with

    server = MimicTransport(server_name=COVER_NAME, fallback=target)
    assert server.profile.source == "default"
    assert await server.refresh_profile()
    # The same sizes, but for a byte or two of ECDSA signature length (it varies per handshake).
    assert len(server.profile.flight) == len(learned.flight)
    assert all(abs(a - b) <= 2 for a, b in zip(server.profile.flight, learned.flight, strict=True))

    async def park(_stream: trio.abc.Stream) -> None:
        await trio.sleep_forever()

    address = await nursery.start(server.listen, parse_address("mimic://127.0.0.1:0"), park)

    # What a ZEONE client's connection shows, up to the server's Finished...
    tcp = Snoop(await trio.open_tcp_stream("127.0.0.1", address.port))
    stream = await client_handshake(tcp, server.server_key.public, COVER_NAME)
    ours = shape(bytes(tcp.received))[: 2 + len(learned.flight)]
    await stream.aclose()
    # ...and what the censor's own connection to the cover site shows.
    again = await learn_profile(target, COVER_NAME)
    theirs = [(22, None), (20, 1)] + [(23, n) for n in again.flight]
    assert [t for t, _ in ours] == [t for t, _ in theirs]
    assert ours[1] == (20, 1)
    # Record sizes equal, but for a byte or two of ECDSA signature length.
    assert all(abs(a[1] - b[1]) <= 2 for a, b in zip(ours[2:], theirs[2:], strict=True))


async def test_unreachable_cover_site_keeps_the_default() -> None:
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    server = MimicTransport(fallback=FallbackTarget("127.0.0.1", port), handshake_timeout=5)
    assert not await server.refresh_profile()
    assert server.profile == ServerProfile.default(server.server_key.public)


def server_hello_record(
    *, suite=0x1301, group=0x001D, versions=b"\x03\x04", random=None
) -> wire.Record:
    hello = wire.ServerHello(
        random or bytes(range(32)),
        b"",
        suite,
        ((43, versions), (51, struct.pack(">H", group) + wire.vec(2, bytes(32)))),
    )
    return wire.Record(22, 0x0303, hello.encode())


def test_profile_from_records_accepts_a_tls13_answer() -> None:
    records = [server_hello_record(suite=0x1302), wire.Record(20, 0x0303, b"\x01")] + [
        wire.Record(23, 0x0303, bytes(n)) for n in (40, 3000, 96, 53)
    ]
    profile = profile_from_records(records, "cover")
    assert (profile.cipher_suite, profile.flight) == (0x1302, (40, 3000, 96, 53))


def test_profile_from_records_refuses_what_it_cannot_copy() -> None:
    from zeone_mimic.profile import HRR_RANDOM

    flight = [wire.Record(23, 0x0303, bytes(60))]
    cases = {
        "HelloRetryRequest": [server_hello_record(random=HRR_RANDOM), *flight],
        "TLS 1.3": [server_hello_record(versions=b"\x03\x03"), *flight],
        "suite": [server_hello_record(suite=0xC02F), *flight],
        "no encrypted flight": [server_hello_record()],
        "ServerHello": [wire.Record(21, 0x0303, b"\x02\x28")],
    }
    for why, records in cases.items():
        try:
            profile_from_records(records, "cover")
        except ProfileError as exc:
            assert why in str(exc), (why, exc)
        else:
            raise AssertionError(f"accepted: {why}")


records_strategy = st.lists(
    st.builds(
        wire.Record,
        st.sampled_from([20, 21, 22, 23]),
        st.just(0x0303),
        st.binary(max_size=200),
    ),
    max_size=6,
)


@given(records=records_strategy)
@settings(max_examples=300)
def test_profile_from_arbitrary_records_is_valid_or_refused(records) -> None:
    try:
        profile = profile_from_records(records, "fuzz")
    except ProfileError:
        return
    assert profile.flight and all(n >= 18 for n in profile.flight)


async def test_mimic_server_without_learning_uses_the_default() -> None:
    key = auth.ServerKey.generate()
    server = MimicTransport(server_key=key, learn_profile=False)
    assert server.profile == ServerProfile.default(key.public)
