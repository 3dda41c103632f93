"""Local API routes for the node's DHT (behind the same bearer token as every route).

Keys travel as text: ``service:vpn_exit``, ``kv:<node id>/<name>``; a key that is not UTF-8 is
written ``hex:<hex digits>``. Values come back as text when they are UTF-8, else base64.
"""

from __future__ import annotations

import base64
from typing import TYPE_CHECKING, Any

import trio
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from zeone.dht import InvalidRecord, Record, kv_key
from zeone.dht.records import MAX_TTL
from zeone.errors import ZeoneError
from zeone.identity import NodeId

if TYPE_CHECKING:
    from zeone.node import Node

LOOKUP_TIMEOUT = 30.0


class BadRequest(ValueError):
    pass


def parse_key(text: Any) -> bytes:
    if not isinstance(text, str) or not text:
        raise BadRequest("a key is a non-empty string such as service:vpn_exit")
    if text.startswith("hex:"):
        try:
            return bytes.fromhex(text[4:])
        except ValueError:
            raise BadRequest("hex: keys need an even number of hex digits") from None
    return text.encode()


def show_key(key: bytes) -> str:
    try:
        return key.decode()
    except UnicodeDecodeError:
        return "hex:" + key.hex()


def record_json(record: Record) -> dict[str, Any]:
    try:
        value: dict[str, Any] = {"value": record.value.decode()}
    except UnicodeDecodeError:
        value = {"value_base64": base64.b64encode(record.value).decode()}
    return {
        "key": show_key(record.key),
        **value,
        "publisher": str(record.publisher_id),
        "seq": record.seq,
        "created_ms": record.created,
        "ttl": record.ttl,
    }


def dht_routes(node: Node) -> list[Route]:
    async def guarded(request: Request, action) -> Response:
        try:
            with trio.fail_after(LOOKUP_TIMEOUT):
                return JSONResponse(await action(request))
        except (BadRequest, InvalidRecord) as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        except (ZeoneError, OSError) as exc:
            return JSONResponse({"error": str(exc)}, status_code=502)
        except trio.TooSlowError:
            return JSONResponse({"error": "the DHT lookup timed out"}, status_code=504)

    async def body(request: Request) -> dict[str, Any]:
        try:
            data = await request.json()
        except ValueError:
            raise BadRequest("send a JSON object") from None
        if not isinstance(data, dict):
            raise BadRequest("send a JSON object")
        return data

    async def stats(_request: Request) -> Response:
        return JSONResponse(node.dht_service.statistics())

    async def get_records(request: Request) -> Response:
        async def action(request: Request) -> Any:
            key = parse_key(request.query_params.get("key"))
            return {"records": [record_json(r) for r in await node.dht.get(key)]}

        return await guarded(request, action)

    async def put_record(request: Request) -> Response:
        async def action(request: Request) -> Any:
            data = await body(request)
            name, value, ttl = data.get("name"), data.get("value"), data.get("ttl", 86400)
            if not isinstance(name, str) or not 0 < len(name) <= 64:
                raise BadRequest("name: 1-64 characters")
            if not isinstance(value, str):
                raise BadRequest("value: a string")
            if type(ttl) is not int or not 0 < ttl <= MAX_TTL:
                raise BadRequest(f"ttl: seconds, 1-{MAX_TTL}")
            key = kv_key(node.node_id, name)
            result = await node.dht.put(key, value.encode(), ttl)
            return {
                "key": show_key(key),
                "acks": result.acks,
                "attempted": result.attempted,
                "pending": result.pending,
            }

        return await guarded(request, action)

    async def providers(request: Request) -> Response:
        async def action(request: Request) -> Any:
            key = parse_key(request.query_params.get("key"))
            found = await node.dht.find_providers(key)
            return {
                "providers": [
                    {"node_id": str(p.contact.node_id), "addresses": list(p.contact.addresses)}
                    for p in found
                ]
            }

        return await guarded(request, action)

    async def provide(request: Request) -> Response:
        async def action(request: Request) -> Any:
            key = parse_key((await body(request)).get("key"))
            try:
                result = await node.dht.provide(key)
            except ValueError as exc:
                raise BadRequest(str(exc)) from None
            return {
                "key": show_key(key),
                "acks": result.acks,
                "attempted": result.attempted,
                "pending": result.pending,
            }

        return await guarded(request, action)

    async def find_node(request: Request) -> Response:
        async def action(request: Request) -> Any:
            try:
                target = NodeId.parse(request.query_params.get("id", ""))
            except ValueError as exc:
                raise BadRequest(str(exc)) from None
            contacts = await node.dht.find_node(target)
            return {
                "nodes": [
                    {
                        "node_id": str(c.node_id),
                        "addresses": list(c.addresses),
                        "distance_bits": (c.node_id.distance(target)).bit_length(),
                    }
                    for c in contacts
                ]
            }

        return await guarded(request, action)

    return [
        Route("/dht", stats),
        Route("/dht/records", get_records, methods=["GET"]),
        Route("/dht/records", put_record, methods=["POST"]),
        Route("/dht/providers", providers, methods=["GET"]),
        Route("/dht/providers", provide, methods=["POST"]),
        Route("/dht/nodes", find_node),
    ]
