"""The cover website over real sockets: curl and httpx see an ordinary static web server."""

from __future__ import annotations

import os
import shutil
import subprocess

import httpx
import pytest
import trio

SECRET = "/assets/app-7c1e0b55.js"  # the conftest listener's secret path
CURL = shutil.which("curl")


class Curled:
    def __init__(self, stdout: bytes) -> None:
        self.stdout = stdout.decode("latin-1")  # keeps CRLF, unlike text mode


def curl(*args: str) -> Curled:
    if CURL is None:
        if os.environ.get("CI"):
            pytest.fail("curl is required in CI")
        pytest.skip("curl is not installed")
    result = subprocess.run(
        [CURL, "-sS", "--max-time", "10", *args],
        capture_output=True,
        timeout=20,
        check=True,
    )
    return Curled(result.stdout)


def head_lines(text: str) -> list[str]:
    return [line for line in text.split("\r\n") if line]


async def raw_exchange(port: int, data: bytes, *, read_until_eof: bool = True) -> bytes:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(data)
        out = bytearray()
        with trio.fail_after(10):
            while chunk := await stream.receive_some(65536):
                out += chunk
                if not read_until_eof and b"\r\n\r\n" in out:
                    break
        return bytes(out)


def without_date(response: bytes) -> bytes:
    return b"\r\n".join(line for line in response.split(b"\r\n") if not line.startswith(b"Date:"))


async def test_curl_gets_the_index_with_real_server_headers(listener) -> None:
    result = await trio.to_thread.run_sync(lambda: curl("-i", listener.base + "/"))
    head, _, body = result.stdout.partition("\r\n\r\n")
    lines = head_lines(head)
    assert lines[0] == "HTTP/1.1 200 OK"
    names = [line.split(":", 1)[0] for line in lines[1:]]
    assert names == [
        "Server", "Date", "Content-Type", "Content-Length", "Last-Modified", "Connection",
        "ETag", "Accept-Ranges",
    ]  # fmt: skip
    assert "Server: nginx" in lines and "Connection: keep-alive" in lines
    assert "Content-Type: text/html" in lines
    assert body == "<h1>Welcome to my site</h1>\n"


async def test_the_secret_path_without_an_upgrade_is_just_another_404(listener) -> None:
    probes = [SECRET, "/assets/app-7c1e0b56.js", SECRET + "?x=1", "/nope"]
    results = []
    for path in probes:
        result = await trio.to_thread.run_sync(lambda p=path: curl("-i", listener.base + p))
        results.append([line for line in head_lines(result.stdout) if not line.startswith("Date:")])
    assert all(r == results[0] for r in results)
    assert results[0][0] == "HTTP/1.1 404 Not Found"
    assert "<center>nginx</center>" in results[0][-1] or any("nginx" in x for x in results[0])


async def test_head_has_the_get_headers_and_no_body(listener) -> None:
    get = await raw_exchange(
        listener.port, b"GET /style.css HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    head = await raw_exchange(
        listener.port, b"HEAD /style.css HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    get_head, _, get_body = get.partition(b"\r\n\r\n")
    head_head, _, head_body = head.partition(b"\r\n\r\n")
    assert without_date(get_head) == without_date(head_head)
    assert b"Content-Type: text/css" in head_head and b"Content-Length: 22" in head_head
    assert get_body == b"body { color: black }\n" and head_body == b""


async def test_keep_alive_serves_pipelined_requests_on_one_connection(listener) -> None:
    request = b"GET /style.css HTTP/1.1\r\nHost: x\r\n\r\n"
    last = b"GET /nope HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    response = await raw_exchange(listener.port, request * 3 + last)
    assert response.count(b"HTTP/1.1 200 OK") == 3
    assert response.count(b"HTTP/1.1 404 Not Found") == 1
    assert response.count(b"Connection: keep-alive") == 3


async def test_httpx_sees_status_codes_of_a_static_site(listener) -> None:
    async with httpx.AsyncClient(base_url=listener.base, follow_redirects=False) as client:
        index = await client.get("/")
        assert index.status_code == 200 and index.headers["server"] == "nginx"
        etag, modified = index.headers["etag"], index.headers["last-modified"]
        assert (await client.get("/", headers={"If-None-Match": etag})).status_code == 304
        assert (await client.get("/", headers={"If-Modified-Since": modified})).status_code == 304
        redirect = await client.get("/docs")
        assert redirect.status_code == 301 and redirect.headers["location"] == "/docs/"
        assert (await client.get("/docs/")).text == "<p>docs</p>\n"
        assert (await client.get("/empty/")).status_code == 403
        assert (await client.get("/.env")).status_code == 404
        assert (await client.get("/link.txt")).status_code == 404  # symlink out of the site
        assert (await client.get("/style.css/")).status_code == 404
        assert (await client.post("/index.html", content=b"x")).status_code == 405
        assert (await client.post("/nope", content=b"x")).status_code == 404
        assert (await client.get("/%E9")).status_code == 400
        # The upgrade request on the secret path from a client that is not ours fails like
        # any WebSocket request to a missing page.
        probe = await client.get(SECRET, headers={"Connection": "Upgrade", "Upgrade": "websocket"})
        assert probe.status_code == 404


async def test_builtin_page_when_no_site_directory(start_listener) -> None:
    listener = await start_listener()
    async with httpx.AsyncClient(base_url=listener.base) as client:
        page = await client.get("/")
        assert page.status_code == 200 and "<title>Field notes</title>" in page.text
        assert (await client.get("/robots.txt")).text.startswith("User-agent: *")
        assert (await client.get("/favicon.ico")).status_code == 404


async def test_path_traversal_is_refused(listener) -> None:
    response = await raw_exchange(
        listener.port, b"GET /../../etc/passwd HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    assert response.startswith(b"HTTP/1.1 400 Bad Request")
    encoded = await raw_exchange(
        listener.port,
        b"GET /docs/%2e%2e/%2e%2e/outside.txt HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    assert encoded.startswith(b"HTTP/1.1 400 Bad Request")


@pytest.mark.parametrize(
    "garbage",
    [
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(40) + b"\r\n\r\n",  # a TLS hello
        b"GET / HTTP/1.1\r\nHost: x\r\nbad header line\r\n\r\n",
        b"GET / HTTP/1.1\r\n\r\n",  # HTTP/1.1 without Host
        b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
        b"\r\n\r\n\r\n\r\n",
        b"SSH-2.0-OpenSSH_9.6\r\n\r\n",
    ],
)
async def test_malformed_requests_get_400_and_a_close(listener, garbage: bytes) -> None:
    response = await raw_exchange(listener.port, garbage)
    assert response.startswith(b"HTTP/1.1 400 Bad Request\r\nServer: nginx\r\n")
    assert b"Connection: close" in response
    assert response.endswith(b"</html>\r\n")  # and then the server closed


async def test_an_unknown_http_version_gets_505(listener) -> None:
    response = await raw_exchange(listener.port, b"GET / HTTP/9.9\r\nHost: x\r\n\r\n")
    assert response.startswith(b"HTTP/1.1 505 HTTP Version Not Supported\r\n")


async def test_oversized_headers_are_refused_and_the_connection_closed(listener) -> None:
    huge = b"GET / HTTP/1.1\r\nHost: x\r\nCookie: " + b"a" * 40_000 + b"\r\n\r\n"
    response = await raw_exchange(listener.port, huge)
    assert response.startswith(b"HTTP/1.1 431 Request Header Or Cookie Too Large")
    assert b"Connection: close" in response


async def test_connections_beyond_the_limit_are_dropped(start_listener) -> None:
    from zeone_http.server import ServerLimits

    listener = await start_listener(limits=ServerLimits(max_connections=2))
    idle = [await trio.open_tcp_stream("127.0.0.1", listener.port) for _ in range(2)]
    await trio.sleep(0.2)  # let the server accept both before the third arrives
    third = await raw_exchange(listener.port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert third == b""
    for stream in idle:
        await stream.aclose()
    with trio.fail_after(10):
        while True:  # once they are gone, service resumes
            again = await raw_exchange(
                listener.port, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
            )
            if again:
                break
            await trio.sleep(0.05)
    assert again.startswith(b"HTTP/1.1 200 OK")


async def test_a_slow_header_sender_is_cut_off(start_listener, site_dir) -> None:
    from zeone_http.server import ServerLimits
    from zeone_http.site import Site

    listener = await start_listener(
        site=Site(site_dir), limits=ServerLimits(header_timeout=0.5, keepalive_timeout=0.5)
    )
    stream = await trio.open_tcp_stream("127.0.0.1", listener.port)
    sent = 0
    with trio.fail_after(20):  # the server must close long before this
        try:
            await stream.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n")
            while True:
                await stream.send_all(b"X-a: b\r\n")
                sent += 1
                await trio.sleep(0.05)
        except trio.BrokenResourceError:
            pass
    await stream.aclose()
    assert sent > 0
