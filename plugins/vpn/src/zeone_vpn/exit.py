"""The exit side: connect to destinations for client nodes, under the exit policy and limits.

Per flow: read the header (bounded size, bounded time), check the client's flow limit, resolve
the name *here* (the entry never resolves), check the policy against every resolved address,
connect to exactly a checked address, answer with a SOCKS reply code, relay. Every refusal is a
reply with the matching code and a message, never a silent close.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import logging
import socket
from collections.abc import Callable
from typing import Any

import attrs
import nacl.public
import trio

from zeone.dht.namespaces import service_key
from zeone.errors import ZeoneError
from zeone.identity import NodeId
from zeone_vpn.config import VpnConfig
from zeone_vpn.metering import Meter
from zeone_vpn.onion import KEY_BYTES, OnionError, OnionStream, exit_handshake
from zeone_vpn.policy import ExitPolicy, IPAddress
from zeone_vpn.relay import RELAY_ERRORS, TokenBucket, relay
from zeone_vpn.socks5 import Reply, decode_address, destination_for, encode_address
from zeone_vpn.wire import (
    MAX_DATAGRAM,
    ONION_PROTOCOL,
    ConnectHeader,
    ConnectReply,
    DatagramReader,
    VpnProtocolError,
    encode_datagram,
    receive_exactly,
    receive_message,
)

log = logging.getLogger(__name__)

EXIT_SERVICE = "vpn_exit"
EXIT_KEY = service_key(EXIT_SERVICE)
RELAY_KEY = service_key("vpn_relay")
MAX_META_RULES = 48
MAX_UDP_PEERS = 256
"""Remote UDP endpoints an association remembers (replies are accepted only from these)."""


class Refused(Exception):
    def __init__(self, code: Reply, message: str) -> None:
        super().__init__(message)
        self.code = code


_ERRNO_REPLY = {
    errno.ECONNREFUSED: Reply.CONNECTION_REFUSED,
    errno.ENETUNREACH: Reply.NETWORK_UNREACHABLE,
    errno.EHOSTUNREACH: Reply.HOST_UNREACHABLE,
    errno.EHOSTDOWN: Reply.HOST_UNREACHABLE,
    errno.ETIMEDOUT: Reply.TTL_EXPIRED,
    errno.EACCES: Reply.NOT_ALLOWED,
    errno.EPERM: Reply.NOT_ALLOWED,
    errno.EADDRNOTAVAIL: Reply.NETWORK_UNREACHABLE,
    errno.EAFNOSUPPORT: Reply.ADDRESS_TYPE_NOT_SUPPORTED,
}


def reply_for(exc: OSError) -> Reply:
    return _ERRNO_REPLY.get(exc.errno or 0, Reply.GENERAL_FAILURE)


async def resolve(host: str, port: int, kind: int = socket.SOCK_STREAM) -> list[IPAddress]:
    """The addresses of ``host`` (an IP literal is itself); Refused(HOST_UNREACHABLE) if none."""
    try:
        return [ipaddress.ip_address(host)]
    except ValueError:
        pass
    try:
        infos = await trio.socket.getaddrinfo(host, port, type=kind)
    except (socket.gaierror, UnicodeError) as exc:
        raise Refused(Reply.HOST_UNREACHABLE, f"cannot resolve {host!r}: {exc}") from None
    out: list[IPAddress] = []
    for family, *_rest, sockaddr in infos:
        if family in (socket.AF_INET, socket.AF_INET6):
            address = ipaddress.ip_address(sockaddr[0].split("%")[0])
            if address not in out:
                out.append(address)
    if not out:
        raise Refused(Reply.HOST_UNREACHABLE, f"{host!r} has no IPv4 or IPv6 address")
    return out


@attrs.define(eq=False)
class ClientState:
    flows: int = 0
    limiter: TokenBucket | None = None


class ExitNode:
    """Per-node exit: the policy, per-client limits and the two stream handlers."""

    def __init__(self, node: Any, config: VpnConfig, meter: Meter) -> None:
        self.node = node
        self.config = config
        self.meter = meter
        self.policy = ExitPolicy.parse(config.policy)
        self.clients: dict[NodeId, ClientState] = {}
        self.active = 0
        self.onion_key = nacl.public.PrivateKey.generate()
        """X25519 key of two-hop flows, fresh each run, published in our signed DHT record."""

    def info(self) -> dict[str, Any]:
        """What entries probe (load) and what the DHT record summarises (policy)."""
        return {
            "v": 1,
            "flows": self.active,
            "max_flows": self.config.max_flows,
            "max_flows_per_client": self.config.max_flows_per_client,
            "udp": self.config.udp,
            "policy": self.policy.summary()[:MAX_META_RULES],
            "onion_key": bytes(self.onion_key.public_key),
        }

    def _client(self, peer: NodeId) -> ClientState:
        client = self.clients.get(peer)
        if client is None:
            client = self.clients[peer] = ClientState()
            if self.config.bandwidth_per_client:
                client.limiter = TokenBucket(self.config.bandwidth_per_client)
        return client

    def _admit(self, peer: NodeId) -> ClientState:
        if self.active >= self.config.max_flows:
            self.meter.count_refusal("exit-full")
            raise Refused(Reply.GENERAL_FAILURE, f"the exit is full ({self.active} flows)")
        client = self._client(peer)
        if client.flows >= self.config.max_flows_per_client:
            self.meter.count_refusal("flow-limit")
            raise Refused(
                Reply.NOT_ALLOWED,
                f"too many flows from this client (limit {self.config.max_flows_per_client})",
            )
        client.flows += 1
        self.active += 1
        return client

    def _release(self, peer: NodeId, client: ClientState) -> None:
        client.flows -= 1
        self.active -= 1
        if client.flows == 0 and client.limiter is None:
            self.clients.pop(peer, None)

    async def _header(self, stream: Any) -> ConnectHeader:
        with trio.fail_after(self.config.handshake_timeout):
            return ConnectHeader.decode(await receive_message(stream))

    # -- TCP --------------------------------------------------------------------------------

    async def handle_connect(self, peer: NodeId, stream: Any) -> None:
        try:
            header = await self._header(stream)
        except (VpnProtocolError, trio.TooSlowError) as exc:
            log.info("bad VPN connect header from %s: %s", peer.short(), exc)
            stream.reset("bad-header")
            return
        await self.serve_connect(peer, stream, header)

    async def serve_connect(self, peer: NodeId, stream: Any, header: ConnectHeader) -> None:
        try:
            client = self._admit(peer)
        except Refused as exc:
            await _send_reply(stream, ConnectReply(exc.code, str(exc)))
            return
        try:
            await self._connect_and_relay(peer, stream, header, client)
        finally:
            self._release(peer, client)

    async def _connect_and_relay(
        self, peer: NodeId, stream: Any, header: ConnectHeader, client: ClientState
    ) -> None:
        target = str(destination_for(header.host, header.port))
        try:
            with trio.fail_after(self.config.connect_timeout):
                remote = await self._open(header)
        except Refused as exc:
            self.meter.count_refusal(exc.code.name.lower())
            log.info("VPN flow from %s to %s refused: %s", peer.short(), target, exc)
            await _send_reply(stream, ConnectReply(exc.code, str(exc)))
            return
        except trio.TooSlowError:
            self.meter.count_refusal("ttl_expired")
            await _send_reply(
                stream,
                ConnectReply(Reply.TTL_EXPIRED, f"no answer from {target} in time"),
            )
            return
        async with remote:
            host, port = remote.socket.getsockname()[:2]
            if not await _send_reply(stream, ConnectReply(Reply.SUCCEEDED, "", host, port)):
                return
            flow = self.meter.open(peer, "exit", "tcp", target)
            try:
                clean = await relay(
                    stream, remote, flow.add_received, flow.add_sent, client.limiter
                )
            finally:
                self.meter.close(flow)
            if not clean:
                stream.reset("relay-broken")

    async def _open(self, header: ConnectHeader) -> trio.SocketStream:
        addresses = await resolve(header.host, header.port)
        decision = self.policy.check_all(addresses, header.port)
        if not decision.allowed:
            raise Refused(Reply.NOT_ALLOWED, f"exit policy: {decision.reason}")
        error: OSError | None = None
        for address in addresses:  # exactly the addresses just checked: no second lookup
            family = socket.AF_INET if address.version == 4 else socket.AF_INET6
            sock = trio.socket.socket(family, socket.SOCK_STREAM)
            try:
                await sock.connect((str(address), header.port))
            except OSError as exc:
                sock.close()
                error = exc
                continue
            except BaseException:
                sock.close()
                raise
            return trio.SocketStream(sock)
        assert error is not None
        raise Refused(reply_for(error), f"{header.host}:{header.port}: {error.strerror or error}")

    # -- UDP --------------------------------------------------------------------------------

    async def handle_udp(self, peer: NodeId, stream: Any) -> None:
        try:
            await self._header(stream)
        except (VpnProtocolError, trio.TooSlowError) as exc:
            log.info("bad VPN UDP header from %s: %s", peer.short(), exc)
            stream.reset("bad-header")
            return
        await self.serve_udp(peer, stream)

    async def handle_onion(self, peer: NodeId, stream: Any) -> None:
        """A two-hop flow: ``peer`` is the relay; the entry behind it stays unknown to us."""
        try:
            with trio.fail_after(self.config.handshake_timeout):
                ephemeral = await receive_exactly(stream, KEY_BYTES)
                send_key, receive_key = exit_handshake(self.onion_key, ephemeral)
                inner = OnionStream(stream, send_key, receive_key)
                data = await receive_message(inner)
                header = ConnectHeader.decode(data)
        except (VpnProtocolError, OnionError, trio.TooSlowError, trio.BrokenResourceError) as exc:
            log.info("bad VPN onion header via %s: %s", peer.short(), exc)
            stream.reset("bad-header")
            return
        if data.get("kind") == "udp":
            await self.serve_udp(peer, inner)
        else:
            await self.serve_connect(peer, inner, header)

    async def serve_udp(self, peer: NodeId, stream: Any) -> None:
        if not self.config.udp:
            await _send_reply(stream, ConnectReply(Reply.COMMAND_NOT_SUPPORTED, "UDP is off"))
            return
        try:
            client = self._admit(peer)
        except Refused as exc:
            await _send_reply(stream, ConnectReply(exc.code, str(exc)))
            return
        try:
            association = UdpAssociation(self, peer, stream, client)
            await association.run()
        finally:
            self._release(peer, client)


class UdpAssociation:
    """One UDP ASSOCIATE at the exit: datagrams from the stream go out after the policy check;
    datagrams back are accepted only from endpoints this association sent to."""

    def __init__(self, exit: ExitNode, peer: NodeId, stream: Any, client: ClientState) -> None:
        self.exit = exit
        self.peer = peer
        self.stream = stream
        self.client = client
        self.sockets: dict[int, trio.socket.SocketType] = {}
        self.contacted: set[tuple[str, int]] = set()
        self.names: dict[str, list[IPAddress]] = {}
        self.dropped = 0

    async def _socket(self, version: int, nursery: trio.Nursery, count: Callable[[int], None]):
        sock = self.sockets.get(version)
        if sock is None:
            family = socket.AF_INET if version == 4 else socket.AF_INET6
            sock = trio.socket.socket(family, socket.SOCK_DGRAM)
            await sock.bind(("0.0.0.0", 0) if version == 4 else ("::", 0))
            self.sockets[version] = sock
            nursery.start_soon(self._receive, sock, count)
        return sock

    async def run(self) -> None:
        if not await _send_reply(self.stream, ConnectReply(Reply.SUCCEEDED, "", "0.0.0.0", 0)):
            return
        flow = self.exit.meter.open(self.peer, "exit", "udp", "udp")
        try:
            async with trio.open_nursery() as nursery:
                await self._send_loop(nursery, flow.add_received, flow.add_sent)
                nursery.cancel_scope.cancel()
        except RELAY_ERRORS:
            pass
        finally:
            self.exit.meter.close(flow)
            for sock in self.sockets.values():
                sock.close()

    async def _send_loop(
        self, nursery: trio.Nursery, received: Callable[[int], None], sent: Callable[[int], None]
    ) -> None:
        reader = DatagramReader()
        limiter = self.client.limiter
        while data := await self.stream.receive_some():
            received(len(data))
            for payload in reader.feed(data):
                if limiter is not None:
                    await limiter.take(len(payload))
                await self._forward(payload, nursery, sent)

    async def _forward(
        self, payload: bytes, nursery: trio.Nursery, sent: Callable[[int], None]
    ) -> None:
        try:
            destination, offset = decode_address(payload, 0)
        except Exception:
            self.dropped += 1
            return
        addresses = self.names.get(destination.host)
        if addresses is None:
            try:
                addresses = await resolve(destination.host, destination.port, socket.SOCK_DGRAM)
            except Refused:
                self.dropped += 1
                return
            if len(self.names) < MAX_UDP_PEERS:
                self.names[destination.host] = addresses
        decision = self.exit.policy.check_all(addresses, destination.port)
        if not decision.allowed:
            self.dropped += 1
            self.exit.meter.count_refusal("udp_not_allowed")
            return
        address = addresses[0]
        key = (str(address), destination.port)
        if key not in self.contacted:
            if len(self.contacted) >= MAX_UDP_PEERS:
                self.contacted.pop()
            self.contacted.add(key)
        try:
            sock = await self._socket(address.version, nursery, sent)
            await sock.sendto(payload[offset:], key)
        except OSError:
            self.dropped += 1

    async def _receive(self, sock: trio.socket.SocketType, sent: Callable[[int], None]) -> None:
        while True:
            try:
                data, source = await sock.recvfrom(MAX_DATAGRAM)
            except OSError:
                continue  # e.g. ICMP port unreachable reported on the socket
            host, port = str(source[0]).split("%")[0], source[1]
            if (host, port) not in self.contacted:
                self.dropped += 1
                continue
            message = encode_datagram(encode_address(destination_for(host, port)) + data)
            await self.stream.send_all(message)
            sent(len(message))


async def _send_reply(stream: Any, reply: ConnectReply) -> bool:
    try:
        await stream.send_all(reply.encode())
    except RELAY_ERRORS:
        return False
    if not reply.ok:
        with contextlib.suppress(RELAY_ERRORS):
            await stream.send_eof()
    return True


async def advertise(node: Any, key: bytes, meta: dict[str, Any], interval: float) -> None:
    """Keep our provider record under ``key`` (``service:vpn_exit``/``service:vpn_relay``)
    fresh; retry soon while we have no DHT peers to store it."""
    while True:
        acks = 0
        try:
            result = await node.dht.provide(key, meta=meta)
            acks = getattr(result, "acks", 0) or 0
        except (ZeoneError, OSError, ValueError) as exc:
            log.info("could not advertise the VPN exit: %s", exc)
        await trio.sleep(interval if acks else min(interval, 1.0))


class Relay:
    """The middle hop of two-hop flows: pipes opaque onion bytes to the next node."""

    def __init__(self, node: Any, config: VpnConfig, meter: Meter) -> None:
        self.node = node
        self.config = config
        self.meter = meter
        self.flows: dict[NodeId, int] = {}

    async def handle(self, peer: NodeId, stream: Any) -> None:
        try:
            with trio.fail_after(self.config.handshake_timeout):
                data = await receive_message(stream)
            if not isinstance(data, dict) or type(data.get("next")) is not str:
                raise VpnProtocolError("relay header needs 'next' (a node id)")
            try:
                next_hop = NodeId.parse(data["next"])
            except ValueError as exc:
                raise VpnProtocolError(str(exc)) from None
        except (VpnProtocolError, trio.TooSlowError) as exc:
            log.info("bad VPN relay header from %s: %s", peer.short(), exc)
            stream.reset("bad-header")
            return
        if next_hop in (peer, self.node.node_id):
            stream.reset("bad-next-hop")
            return
        if self.flows.get(peer, 0) >= self.config.max_flows_per_client:
            self.meter.count_refusal("relay-flow-limit")
            stream.reset("flow-limit")
            return
        self.flows[peer] = self.flows.get(peer, 0) + 1
        try:
            try:
                with trio.fail_after(self.config.connect_timeout):
                    onward = await self.node.rpc.open_stream(next_hop, ONION_PROTOCOL)
            except (ZeoneError, OSError, trio.TooSlowError) as exc:
                log.info("VPN relay cannot reach %s: %s", next_hop.short(), exc)
                stream.reset("next-hop-unreachable")
                return
            async with onward:
                flow = self.meter.open(peer, "relay", "tcp", f"-> {next_hop.short()}")
                try:
                    clean = await relay(stream, onward, flow.add_received, flow.add_sent)
                finally:
                    self.meter.close(flow)
                if not clean:
                    stream.reset("relay-broken")
                    onward.reset("relay-broken")
        finally:
            self.flows[peer] -= 1
            if not self.flows[peer]:
                del self.flows[peer]
