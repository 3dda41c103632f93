"""Property tests of the parsers: request targets, the cover site, upgrade checks, the front."""

from __future__ import annotations

import base64
import re
from pathlib import Path

import h11
import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from wsproto.utilities import generate_accept_token
from zeone_http.handshake import (
    ClientHello,
    HandshakeError,
    accept_response,
    check_acceptance,
    client_request,
    upgrade_key,
)
from zeone_http.server import HttpFront, ServerLimits
from zeone_http.site import REASONS, BadTarget, Site, normalize_target

SECRET = "/ws/3bd1c9a07e"
segment = st.sampled_from(["a", "b", "..", ".", "", "%2e%2e", "%2F", "%00", "x y", "%E9", "é"])
targets = st.one_of(
    st.lists(segment, max_size=8).map(lambda parts: ("/" + "/".join(parts)).encode()),
    st.binary(max_size=64),
    st.text(max_size=40).map(lambda t: ("/" + t).encode("utf-8")),
)


@given(target=targets)
def test_normalized_targets_never_climb_or_contain_dot_segments(target: bytes) -> None:
    try:
        path, _trailing = normalize_target(target)
    except BadTarget:
        return
    assert path.startswith("/")
    parts = path.split("/")[1:]
    assert ".." not in parts and "." not in parts and "\x00" not in path
    assert "//" not in path


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(target=targets, method=st.sampled_from([b"GET", b"HEAD", b"POST", b"OPTIONS", b"BREW"]))
def test_the_site_only_serves_files_inside_its_root(site_dir: Path, target, method) -> None:
    reply = Site(site_dir).respond(method, target, [])
    assert reply.status in REASONS
    if reply.file is not None:
        assert site_dir.resolve() in reply.file.resolve().parents
        assert not any(p.startswith(".") for p in reply.file.relative_to(site_dir).parts)
        assert method in (b"GET", b"HEAD")


UPGRADE_HEADERS = ["Connection", "Upgrade", "Sec-WebSocket-Version", "Sec-WebSocket-Key"]


def _headers(valid: dict[str, str], drop: set[str], override: dict[str, str]) -> list:
    return [(k, override.get(k, v)) for k, v in valid.items() if k not in drop]


VALID = {
    "Host": "example.org",
    "Connection": "keep-alive, Upgrade",
    "Upgrade": "websocket",
    "Sec-WebSocket-Version": "13",
    "Sec-WebSocket-Key": base64.b64encode(b"k" * 16).decode(),
}


@given(
    drop=st.sets(st.sampled_from(UPGRADE_HEADERS)),
    override=st.dictionaries(
        st.sampled_from(UPGRADE_HEADERS),
        st.sampled_from(["", "close", "h2c", "8", "14", "AAAA", "websocket", "upgrade", "x" * 30]),
        max_size=3,
    ),
    path=st.sampled_from([SECRET, SECRET + "?v=1", SECRET + "/", "/ws/3bd1c9a07f", "/"]),
    method=st.sampled_from(["GET", "POST"]),
    version=st.sampled_from(["1.1", "1.0"]),
)
def test_upgrade_key_accepts_exactly_the_valid_upgrades(drop, override, path, method, version):
    request = h11.Request(
        method=method, target=path, headers=_headers(VALID, drop, override), http_version=version
    )
    key = upgrade_key(request, SECRET)
    effective = {k: override.get(k, v) for k, v in VALID.items() if k not in drop}
    valid = (
        method == "GET"
        and version == "1.1"
        and path.split("?")[0] == SECRET
        and "upgrade" in effective.get("Connection", "").lower()
        and effective.get("Upgrade", "").lower() == "websocket"
        and effective.get("Sec-WebSocket-Version") == "13"
        and effective.get("Sec-WebSocket-Key") == VALID["Sec-WebSocket-Key"]
    )
    assert (key is not None) == valid


@given(host=st.from_regex(r"[a-z0-9.-]{1,30}(:[0-9]{1,5})?", fullmatch=True))
def test_our_client_request_passes_our_server_check_and_our_101_passes_the_client(host):
    hello = ClientHello(path=SECRET, host=host, origin=f"https://{host}")
    request = client_request(hello)
    # Through the wire format, as the server sees it.
    client = h11.Connection(h11.CLIENT)
    server = h11.Connection(h11.SERVER)
    server.receive_data(client.send(request) + client.send(h11.EndOfMessage()))
    parsed = server.next_event()
    assert isinstance(parsed, h11.Request)
    key = upgrade_key(parsed, SECRET)
    assert key == hello.key
    response = accept_response(key, "nginx", "Thu, 01 Jan 2026 00:00:00 GMT")
    client.receive_data(server.send(response))
    check_acceptance(client.next_event(), hello.key)


@given(
    status=st.sampled_from([101, 200, 301, 400, 404, 426, 500]),
    headers=st.lists(
        st.tuples(
            st.sampled_from(["Upgrade", "Connection", "Sec-WebSocket-Accept", "X-Other"]),
            st.sampled_from(["websocket", "upgrade", "Upgrade", "", "garbage", "AAAA"]),
        ),
        max_size=5,
    ),
    correct_accept=st.booleans(),
)
def test_check_acceptance_raises_only_handshake_errors(status, headers, correct_accept) -> None:
    key = base64.b64encode(b"q" * 16)
    if correct_accept:
        headers = [*headers, ("Sec-WebSocket-Accept", generate_accept_token(key).decode())]
    cls = h11.InformationalResponse if status < 200 else h11.Response
    response = cls(status_code=status, headers=headers)
    try:
        check_acceptance(response, key)
    except HandshakeError:
        return
    names = {(k.lower(), v.lower()) for k, v in headers}
    assert status == 101 and correct_accept
    assert ("upgrade", "websocket") in names and ("connection", "upgrade") in names


request_lines = st.sampled_from(
    [b"GET / HTTP/1.1\r\n", b"HEAD /index.html HTTP/1.1\r\n", f"GET {SECRET} HTTP/1.1\r\n".encode(),
     b"POST /x HTTP/1.1\r\n", b"GET /\x00 HTTP/1.1\r\n", b"GET / HTTP/1.0\r\n", b""]
)  # fmt: skip
header_lines = st.lists(
    st.one_of(
        st.sampled_from(
            [
                b"Host: x\r\n",
                b"Connection: Upgrade\r\n",
                b"Upgrade: websocket\r\n",
                b"Content-Length: 3\r\n",
                b"Transfer-Encoding: chunked\r\n",
                b"Connection: close\r\n",
                b"Sec-WebSocket-Version: 13\r\n",
                b"Sec-WebSocket-Key: a2tra2tra2tra2tra2tra2s=\r\n",
                b": empty name\r\n",
                b"no colon\r\n",
                b" folded\r\n",
            ]
        ),
        st.binary(max_size=30),
    ),
    max_size=8,
)


@settings(max_examples=150)
@given(line=request_lines, headers=header_lines, tail=st.binary(max_size=40))
def test_the_front_answers_any_bytes_with_http_or_silence(line, headers, tail) -> None:
    async def main() -> bytes:
        client, server = trio.testing.memory_stream_pair()
        front = HttpFront(Site(), SECRET, ServerLimits(header_timeout=5, keepalive_timeout=5))
        upgraded: list[object] = []

        async def on_ws(ws) -> None:
            upgraded.append(ws)

        out = bytearray()
        async with trio.open_nursery() as nursery:

            async def serve() -> None:
                try:
                    await front.serve(server, on_ws)
                finally:
                    await server.aclose()

            nursery.start_soon(serve)
            await client.send_all(line + b"".join(headers) + b"\r\n" + tail)
            with trio.fail_after(30):
                try:
                    while data := await client.receive_some():
                        out += data
                except trio.BrokenResourceError:
                    pass
        assert front.active == 0
        return bytes(out)

    out = trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    if out:
        assert re.match(rb"HTTP/1\.1 [1-5]\d\d [A-Za-z -]+\r\n", out), out[:80]
        for response in re.findall(rb"HTTP/1\.1 ([1-5]\d\d) ", out):
            assert int(response) in REASONS or int(response) == 101


@pytest.mark.parametrize("target", [b"*", b"example.org:443", b"http://evil/../x"])
def test_odd_target_forms(target: bytes) -> None:
    reply = Site().respond(b"GET", target, [])
    assert reply.status in (400, 404)
