"""The local HTTP API of a real node: hypercorn on 127.0.0.1:0, a real token, real HTTP."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from prometheus_client import Counter
from starlette.requests import Request
from starlette.responses import JSONResponse

from zeone.client import ApiClient
from zeone.errors import ApiUnavailable, ConfigError, PluginError, ZeoneError
from zeone.identity import Identity
from zeone.node import Node


async def http(method: str, url: str, token: str | None = None, **kwargs: Any) -> httpx.Response:
    headers = kwargs.pop("headers", {})
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"

    def call() -> httpx.Response:
        return httpx.request(method, url, headers=headers, timeout=10, **kwargs)

    return await trio.to_thread.run_sync(call)


def hello_plugin(make_plugin):
    greetings: list[str] = []

    async def list_greetings(request: Request) -> JSONResponse:
        return JSONResponse({"greetings": greetings, "node": str(request.app.state.node.node_id)})

    async def add_greeting(request: Request) -> JSONResponse:
        greetings.append((await request.json())["text"])
        return JSONResponse({"ok": True}, status_code=201)

    def zeone_register_routes(register, node):
        register("/hello/greetings", list_greetings)
        register("/hello/greetings", add_greeting, methods=["post"])

    def zeone_register_metrics(registry, node):
        Counter("zeone_hello_greetings_total", "Greetings sent.", registry=registry).inc(3)

    def zeone_node_status(node):
        return {"greetings": len(greetings)}

    return make_plugin(
        "hello",
        zeone_register_routes=zeone_register_routes,
        zeone_register_metrics=zeone_register_metrics,
        zeone_node_status=zeone_node_status,
    )


@pytest.fixture
async def api_node(tmp_path: Path, nursery, make_plugin, make_catalog, node_config) -> Node:
    catalog = make_catalog(hello_plugin(make_plugin))
    config = node_config(tmp_path, catalog=catalog, enable=["hello"])
    node = Node(config, catalog=catalog, identity=Identity.generate())
    await nursery.start(node.run)
    return node


def token_of(node: Node) -> str:
    return node.config.token_file.read_text().strip()


async def test_status(api_node: Node) -> None:
    response = await http("GET", f"{api_node.api_url}/status", token_of(api_node))
    assert response.status_code == 200
    status = response.json()
    assert status["node_id"] == str(api_node.node_id)
    assert status["role"] == "full"
    assert status["pid"] == os.getpid()
    assert status["plugins"] == ["hello"]
    assert status["sections"]["hello"] == {"greetings": 0}
    assert status["sections"]["core"]["api_url"] == api_node.api_url
    assert status["uptime"] >= 0
    services = {(s["plugin"], s["service"]): s for s in status["services"]}
    assert services["core", "api"]["state"] == "running"


async def test_peers(api_node: Node) -> None:
    response = await http("GET", f"{api_node.api_url}/peers", token_of(api_node))
    assert response.status_code == 200
    assert response.json() == {"peers": []}


async def test_plugins(api_node: Node) -> None:
    response = await http("GET", f"{api_node.api_url}/plugins", token_of(api_node))
    assert response.status_code == 200
    rows = {row["name"]: row for row in response.json()["plugins"]}
    assert rows["core"]["kind"] == "builtin"
    assert rows["core"]["enabled"] is True
    assert rows["hello"]["enabled"] is True
    assert rows["hello"]["status"] == "ok"


async def test_metrics_in_prometheus_text(api_node: Node) -> None:
    response = await http("GET", f"{api_node.api_url}/metrics", token_of(api_node))
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    assert "# TYPE zeone_node_info gauge" in text
    assert f'node_id="{api_node.node_id}"' in text
    assert 'role="full"' in text
    assert "zeone_node_uptime_seconds " in text
    for gauge in ("zeone_peers_connected", "zeone_dht_routing_contacts", "zeone_dht_records"):
        assert f"{gauge} " in text
    assert "zeone_plugins_enabled 1.0" in text
    assert "zeone_hello_greetings_total 3.0" in text  # registered by the plugin


async def test_plugin_routes_are_served_behind_the_token(api_node: Node) -> None:
    url, token = f"{api_node.api_url}/hello/greetings", token_of(api_node)
    created = await http("POST", url, token, json={"text": "hi"})
    assert created.status_code == 201
    listed = await http("GET", url, token)
    assert listed.json() == {"greetings": ["hi"], "node": str(api_node.node_id)}
    assert (await http("GET", url)).status_code == 401
    assert (await http("POST", url, json={"text": "sneaky"})).status_code == 401
    assert (await http("DELETE", url, token)).status_code == 405
    assert (await http("GET", url, token)).json()["greetings"] == ["hi"]


async def test_every_unauthorized_request_gets_the_same_bare_401(api_node: Node) -> None:
    base, token = api_node.api_url, token_of(api_node)
    attempts = [
        await http("GET", f"{base}/status"),  # no token
        await http("GET", f"{base}/status", "wrong-token"),
        await http("GET", f"{base}/status", token[:-1]),  # a prefix of the real one
        await http("GET", f"{base}/status", headers={"Authorization": token}),  # no scheme
        await http("GET", f"{base}/status", headers={"Authorization": f"Basic {token}"}),
        await http("GET", f"{base}/no/such/route"),  # unknown path without token
        await http("POST", f"{base}/metrics", "wrong-token"),
    ]
    for response in attempts:
        assert response.status_code == 401
        assert response.content == attempts[0].content == b"unauthorized\n"
        assert response.headers["www-authenticate"] == "Bearer"
    # with the token an unknown path is a plain 404
    assert (await http("GET", f"{base}/no/such/route", token)).status_code == 404


async def test_token_file_is_private_and_survives_restarts(
    tmp_path: Path, make_catalog, node_config
) -> None:
    config = node_config(tmp_path)
    identity = Identity.generate()
    tokens = []
    for _ in range(2):
        node = Node(config, catalog=make_catalog(), identity=identity)
        async with trio.open_nursery() as nursery:
            await nursery.start(node.run)
            token = token_of(node)
            assert stat.S_IMODE(config.token_file.stat().st_mode) == 0o600
            assert len(token) >= 32
            response = await http("GET", f"{node.api_url}/status", token)
            assert response.status_code == 200
            tokens.append(token)
            node.stop()
    assert tokens[0] == tokens[1]


async def test_exposed_token_file_refuses_to_start(
    tmp_path: Path, make_catalog, node_config
) -> None:
    config = node_config(tmp_path)
    config.token_file.write_text("x" * 43 + "\n")
    config.token_file.chmod(0o644)
    node = Node(config, catalog=make_catalog(), identity=Identity.generate())
    with pytest.raises(ConfigError, match="readable by other users"):
        await node.run()
    assert not node.runtime_file.exists()


async def test_runtime_file_and_client(api_node: Node) -> None:
    runtime = json.loads(api_node.runtime_file.read_text())
    assert runtime["pid"] == os.getpid()
    assert runtime["node_id"] == str(api_node.node_id)
    assert runtime["api_url"] == api_node.api_url
    client = ApiClient.from_config(api_node.config)
    assert client.url == api_node.api_url
    status = await trio.to_thread.run_sync(client.get_json, "/status")
    assert status["node_id"] == str(api_node.node_id)
    metrics = await trio.to_thread.run_sync(client.get, "/metrics")
    assert b"zeone_node_uptime_seconds" in metrics

    impostor = ApiClient(api_node.api_url, "not-the-token")
    with pytest.raises(ZeoneError, match="rejected the API token"):
        await trio.to_thread.run_sync(impostor.get_json, "/status")
    with pytest.raises(ZeoneError, match="HTTP 404"):
        await trio.to_thread.run_sync(client.get_json, "/nope")

    api_node.stop()
    await api_node.stopped.wait()
    assert not api_node.runtime_file.exists()
    with pytest.raises(ApiUnavailable, match="no node is running"):
        await trio.to_thread.run_sync(client.get_json, "/status")


def test_client_without_a_node(tmp_path: Path, node_config) -> None:
    with pytest.raises(ApiUnavailable, match="no node has run with data dir"):
        ApiClient.from_config(node_config(tmp_path))


async def test_api_can_be_disabled(tmp_path: Path, make_catalog, node_config) -> None:
    config = node_config(tmp_path, settings={"api.enabled": False})
    node = Node(config, catalog=make_catalog(), identity=Identity.generate())
    async with trio.open_nursery() as nursery:
        await nursery.start(node.run)
        assert node.api_url is None
        assert not config.token_file.exists()
        assert all(s["service"] != "api" for s in node.status()["services"])
        node.stop()


def test_route_outside_the_plugin_prefix_is_refused(
    tmp_path: Path, make_plugin, make_catalog, node_config
) -> None:
    async def endpoint(request: Request) -> JSONResponse:
        return JSONResponse({})

    def shadow_status(register):
        register("/status", endpoint)

    def squat_other_plugin(register):
        register("/hellothere/x", endpoint)

    for hook in (shadow_status, squat_other_plugin):
        catalog = make_catalog(make_plugin("hello", zeone_register_routes=hook))
        config = node_config(tmp_path, catalog=catalog, enable=["hello"])
        with pytest.raises(PluginError, match=r"plugin 'hello': route .* must start with /hello/"):
            Node(config, catalog=catalog, identity=Identity.generate())


def test_duplicate_route_is_refused(tmp_path: Path, make_plugin, make_catalog, node_config) -> None:
    async def endpoint(request: Request) -> JSONResponse:
        return JSONResponse({})

    def twice(register):
        register("/hello/x", endpoint, methods=["GET"])
        register("/hello/x", endpoint, methods=["get", "post"])

    catalog = make_catalog(make_plugin("hello", zeone_register_routes=twice))
    config = node_config(tmp_path, catalog=catalog, enable=["hello"])
    with pytest.raises(PluginError, match="route '/hello/x' is already registered"):
        Node(config, catalog=catalog, identity=Identity.generate())


async def test_a_failing_status_section_does_not_hide_the_rest(
    tmp_path: Path, make_plugin, make_catalog, node_config
) -> None:
    def zeone_node_status(node):
        raise RuntimeError("status is broken")

    catalog = make_catalog(make_plugin("grumpy", zeone_node_status=zeone_node_status))
    config = node_config(tmp_path, catalog=catalog, enable=["grumpy"])
    node = Node(config, catalog=catalog, identity=Identity.generate())
    async with trio.open_nursery() as nursery:
        await nursery.start(node.run)
        response = await http("GET", f"{node.api_url}/status", token_of(node))
        assert response.status_code == 200
        sections = response.json()["sections"]
        assert sections["grumpy"] == {"error": "RuntimeError: status is broken"}
        assert sections["core"]["api_url"] == node.api_url
        node.stop()


async def test_browsers_authenticate_with_the_ui_cookie_or_a_login_url(api_node: Node) -> None:
    """A page cannot set an Authorization header on navigations or WebSocket handshakes: the token
    rides in the zeone_token cookie, set by a plugin's /<plugin>/ui/login?token=... endpoint."""
    base, token = api_node.api_url, token_of(api_node)
    cookie = {"Cookie": f"zeone_token={token}"}
    assert (await http("GET", f"{base}/hello/greetings", headers=cookie)).status_code == 200
    wrong = {"Cookie": f"other=1; zeone_token={token[:-1]}x"}
    assert (await http("GET", f"{base}/hello/greetings", headers=wrong)).status_code == 401
    # The query token counts only on a .../ui/login path (no route there: 404 means it got in).
    assert (await http("GET", f"{base}/hello/ui/login?token={token}")).status_code == 404
    assert (await http("GET", f"{base}/hello/ui/login?token=nope")).status_code == 401
    assert (await http("GET", f"{base}/hello/greetings?token={token}")).status_code == 401
    # An explicit Authorization header wins over the cookie, even when it is wrong.
    both = {"Authorization": "Bearer wrong", **cookie}
    assert (await http("GET", f"{base}/status", headers=both)).status_code == 401
