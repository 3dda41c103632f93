"""The entry side: a SOCKS5 server whose flows leave the network at exit nodes.

Each accepted client runs the sans-IO handshake (`socks5.ServerHandshake`) with a deadline,
then, for CONNECT, opens one multiplexed stream to an exit chosen by the `ExitDirectory`, sends
the destination exactly as the client gave it (names are resolved at the exit: no local DNS),
turns the exit's answer into the SOCKS reply and relays raw bytes. If the exit cannot be reached
or dies before answering, the next candidate is tried, so only flows already relaying through a
dying exit fail. UDP ASSOCIATE relays the client's datagrams over one stream per association.
"""

from __future__ import annotations

import contextlib
import hmac
import logging
import socket
import struct
from collections.abc import Callable
from typing import Any

import trio

from zeone.errors import ZeoneError
from zeone_vpn.config import VpnConfig
from zeone_vpn.directory import ExitDirectory, ExitInfo
from zeone_vpn.metering import Meter
from zeone_vpn.onion import OnionStream, entry_handshake
from zeone_vpn.relay import RELAY_ERRORS, relay
from zeone_vpn.socks5 import (
    Cmd,
    Command,
    Destination,
    Reply,
    ServerHandshake,
    SocksError,
    destination_for,
    parse_udp_header,
    reply,
)
from zeone_vpn.wire import (
    CONNECT_PROTOCOL,
    MAX_DATAGRAM,
    RELAY_PROTOCOL,
    UDP_PROTOCOL,
    ConnectHeader,
    ConnectReply,
    DatagramReader,
    VpnProtocolError,
    encode_datagram,
    encode_message,
    receive_message,
)

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 3
"""Exits tried for one flow before giving up (each failure also benches that exit)."""
EXIT_REPLY_GRACE = 5.0
"""Extra time over connect_timeout for the exit's answer (its own connect has that long)."""


class NoExit(Exception):
    def __init__(self, code: Reply, message: str) -> None:
        super().__init__(message)
        self.code = code


class SocksServer:
    """The ``vpn/socks`` service: listens on ``socks_bind``."""

    name = "socks"

    def __init__(
        self, node: Any, config: VpnConfig, directory: ExitDirectory, meter: Meter
    ) -> None:
        self.node = node
        self.config = config
        self.directory = directory
        self.meter = meter
        self.address: tuple[str, int] | None = None
        self.clients = 0
        self.failed_handshakes = 0
        users = [entry.partition(":") for entry in config.users]
        self.users = {user: password for user, _, password in users}

    def check(self, username: str, password: str) -> bool:
        if not self.users:
            return True  # credentials only select isolation
        expected = self.users.get(username)
        return expected is not None and hmac.compare_digest(expected, password)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        host, port = _split(self.config.socks_bind)
        listeners = await trio.open_tcp_listeners(port, host=host)
        try:
            self.address = listeners[0].socket.getsockname()[:2]
            log.info("VPN SOCKS5 proxy listening on %s:%s", *self.address)
            task_status.started()
            await trio.serve_listeners(self._serve, listeners)
        finally:
            self.address = None
            for listener in listeners:
                await listener.aclose()

    async def _serve(self, client: trio.SocketStream) -> None:
        self.clients += 1
        try:
            await self._client(client)
        except RELAY_ERRORS:
            pass  # the client went away
        finally:
            self.clients -= 1
            await trio.aclose_forcefully(client)

    async def _client(self, client: trio.SocketStream) -> None:
        handshake = ServerHandshake(allow_no_auth=not self.users, check=self.check)
        command: Command | None = None
        try:
            with trio.fail_after(self.config.handshake_timeout):
                while command is None:
                    data = await client.receive_some(1024)
                    if not data:
                        return
                    out, command = handshake.feed(data)
                    if out:
                        await client.send_all(out)
        except SocksError as exc:
            self.failed_handshakes += 1
            log.info("SOCKS client %s: %s", _peer(client), exc)
            if exc.reply:
                await client.send_all(exc.reply)
            return
        except trio.TooSlowError:
            self.failed_handshakes += 1
            return
        key = None
        if self.config.isolate_by_auth and command.username is not None:
            key = (command.username, command.password)
        if command.cmd == Cmd.CONNECT:
            await self._connect(client, command.destination, key, handshake.remainder)
        else:
            await self._udp(client, command.destination, key)

    # -- CONNECT ------------------------------------------------------------------------------

    async def _open(
        self, destination: Destination, key: Any, protocol: str, udp: bool = False
    ) -> tuple[ExitInfo, Any, ConnectReply]:
        """A stream to a working exit and its answer; NoExit with the reply code otherwise."""
        directory = self.directory
        candidates, allowed = directory.candidates(
            destination.host, destination.port, key=key, udp=udp
        )
        if (not candidates and allowed) or (directory.hops > 1 and not directory.relays):
            await directory.refresh()
            candidates, allowed = directory.candidates(
                destination.host, destination.port, key=key, udp=udp
            )
        if not candidates:
            if not allowed:
                raise NoExit(Reply.NOT_ALLOWED, f"no exit's policy allows {destination}")
            raise NoExit(Reply.NETWORK_UNREACHABLE, "no VPN exit node is known")
        header = ConnectHeader(destination.host, destination.port).encode()
        last = "no exit answered"
        for info in candidates[:MAX_ATTEMPTS]:
            stream = None
            middle = None
            try:
                with trio.fail_after(self.config.connect_timeout + EXIT_REPLY_GRACE):
                    if directory.hops > 1:
                        middle = directory.relay_for(info.node_id)
                        if middle is None:
                            raise NoExit(Reply.NETWORK_UNREACHABLE, "no VPN relay node is known")
                        kind = "udp" if udp else "connect"
                        stream = await self._open_onion(info, middle, destination, kind)
                    else:
                        stream = await self.node.rpc.open_stream(info.node_id, protocol)
                        await stream.send_all(header)
                    answer = ConnectReply.decode(await receive_message(stream))
            except (ZeoneError, VpnProtocolError, trio.TooSlowError, *RELAY_ERRORS) as exc:
                last = f"exit {info.node_id.short()}: {exc}"
                log.info("VPN exit %s failed for %s: %s", info.node_id.short(), destination, exc)
                # Through a relay we cannot tell which hop failed; the relay is our neighbour.
                directory.failed(middle.node_id if middle is not None else info.node_id)
                if stream is not None:
                    await trio.aclose_forcefully(stream)
                continue
            directory.succeeded(info.node_id)
            directory.rebind(key, info.node_id)
            return info, stream, answer
        raise NoExit(Reply.GENERAL_FAILURE, last)

    async def _open_onion(
        self, exit: ExitInfo, relay: ExitInfo, destination: Destination, kind: str
    ) -> OnionStream:
        """entry -> relay -> exit: the relay sees only the exit's id and sealed records."""
        assert exit.onion_key is not None
        stream = await self.node.rpc.open_stream(relay.node_id, RELAY_PROTOCOL)
        try:
            public, send_key, receive_key = entry_handshake(exit.onion_key)
            await stream.send_all(encode_message({"next": str(exit.node_id)}) + public)
            onion = OnionStream(stream, send_key, receive_key)
            await onion.send_all(ConnectHeader(destination.host, destination.port, kind).encode())
        except BaseException:
            await trio.aclose_forcefully(stream)
            raise
        return onion

    async def _connect(
        self, client: trio.SocketStream, destination: Destination, key: Any, early: bytes
    ) -> None:
        try:
            info, stream, answer = await self._open(destination, key, CONNECT_PROTOCOL)
        except NoExit as exc:
            self.meter.count_refusal(exc.code.name.lower())
            log.info("SOCKS CONNECT %s: %s", destination, exc)
            await client.send_all(reply(exc.code))
            return
        try:
            if not answer.ok:
                self.meter.count_refusal(answer.code.name.lower())
                log.info("SOCKS CONNECT %s refused by exit: %s", destination, answer.message)
                await client.send_all(reply(answer.code))
                return
            await client.send_all(reply(Reply.SUCCEEDED, _bound(answer)))
            flow = self.meter.open(info.node_id, "entry", "tcp", str(destination))
            try:
                if early:
                    await stream.send_all(early)
                    flow.add_sent(len(early))
                clean = await relay(client, stream, flow.add_sent, flow.add_received)
            finally:
                self.meter.close(flow)
            if not clean:
                if info.node_id not in self.node.network.connections:
                    self.directory.failed(info.node_id)  # the connection to the exit died
                _abort(client)
        finally:
            await trio.aclose_forcefully(stream)

    # -- UDP ASSOCIATE --------------------------------------------------------------------------

    async def _udp(self, client: trio.SocketStream, requested: Destination, key: Any) -> None:
        if not self.config.udp:
            await client.send_all(reply(Reply.COMMAND_NOT_SUPPORTED))
            return
        local_host = client.socket.getsockname()[0]
        family = socket.AF_INET6 if ":" in local_host else socket.AF_INET
        sock = trio.socket.socket(family, socket.SOCK_DGRAM)
        try:
            await sock.bind((local_host, 0))
            try:
                any_dest = Destination(requested.atyp, "0.0.0.0", 0)
                if requested.atyp.name == "IPV6":
                    any_dest = destination_for("::", 0)
                info, stream, answer = await self._open(any_dest, key, UDP_PROTOCOL, udp=True)
            except NoExit as exc:
                await client.send_all(reply(exc.code))
                return
            try:
                if not answer.ok:
                    await client.send_all(reply(answer.code))
                    return
                bound_host, bound_port = sock.getsockname()[:2]
                await client.send_all(
                    reply(Reply.SUCCEEDED, destination_for(bound_host, bound_port))
                )
                flow = self.meter.open(info.node_id, "entry", "udp", "udp")
                try:
                    await self._udp_relay(client, sock, stream, requested, flow.add_sent,
                                          flow.add_received)  # fmt: skip
                finally:
                    self.meter.close(flow)
            finally:
                await trio.aclose_forcefully(stream)
        finally:
            sock.close()

    async def _udp_relay(
        self,
        client: trio.SocketStream,
        sock: trio.socket.SocketType,
        stream: Any,
        requested: Destination,
        sent: Callable[[int], None],
        received: Callable[[int], None],
    ) -> None:
        client_ip = client.socket.getpeername()[0]
        # RFC 1928: the request names the address the client will send from (0s if unknown).
        pinned_port = requested.port or None
        source: list[Any] = []

        async def from_client() -> None:
            while True:
                datagram, address = await sock.recvfrom(MAX_DATAGRAM)
                if address[0] != client_ip or (pinned_port and address[1] != pinned_port):
                    continue  # only the client that asked may use the relay
                if not source:
                    source.append(address)
                elif address != source[0]:
                    continue
                try:
                    _destination, frag, _offset = parse_udp_header(datagram)
                except SocksError:
                    continue
                if frag:
                    continue  # fragmentation is optional (RFC 1928 §7); we drop fragments
                message = encode_datagram(datagram[3:])
                await stream.send_all(message)
                sent(len(message))

        async def from_exit() -> None:
            reader = DatagramReader()
            while data := await stream.receive_some():
                received(len(data))
                for payload in reader.feed(data):
                    if source:
                        with contextlib.suppress(OSError):
                            await sock.sendto(b"\x00\x00\x00" + payload, source[0])

        async def control() -> None:
            # The association lives as long as the TCP connection (RFC 1928 §7).
            while await client.receive_some(1024):
                pass

        async with trio.open_nursery() as nursery:

            async def guard(fn: Callable[[], Any]) -> None:
                with contextlib.suppress(RELAY_ERRORS):
                    await fn()
                nursery.cancel_scope.cancel()

            nursery.start_soon(guard, from_client)
            nursery.start_soon(guard, from_exit)
            nursery.start_soon(guard, control)

    def snapshot(self) -> dict[str, Any]:
        return {
            "socks": f"{self.address[0]}:{self.address[1]}" if self.address else None,
            "clients": self.clients,
            "failed_handshakes": self.failed_handshakes,
        }


def _bound(answer: ConnectReply) -> Destination:
    try:
        return destination_for(answer.bound_host, answer.bound_port)
    except ValueError:
        return destination_for("0.0.0.0", 0)


def _abort(client: trio.SocketStream) -> None:
    """Close with RST so the client sees a failure, not a clean end of data."""
    with contextlib.suppress(OSError):
        client.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


def _split(bind: str) -> tuple[str, int]:
    from zeone.config import parse_host_port

    return parse_host_port(bind)


def _peer(client: trio.SocketStream) -> str:
    try:
        host, port = client.socket.getpeername()[:2]
    except OSError:
        return "?"
    return f"{host}:{port}"
