"""py-libp2p transport benchmark (TCP + Noise + yamux), the peer run next to ZEONE's.

Standalone: run it with the interpreter of a venv that has ``libp2p`` installed
(it does not import zeone)::

    /tmp/lp2p/bin/python benchmarks/peers/libp2p_transport.py --quick

Everything runs in one process on 127.0.0.1: one listening host (the server)
and dialing hosts (clients), each restricted to Noise as the only security
protocol and yamux as the only muxer, so nothing else can be negotiated.
Prints ONE JSON object on stdout; logs go to stderr. Exits non-zero with a
message on stderr on failure or when the overall timeout expires.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import json
import logging
import os
import platform
import signal
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

# benchmarks/common.py has no dependency on zeone, so this venv can share its statistics.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import multiaddr
import trio
from common import percentile
from libp2p import new_host
from libp2p.crypto.ed25519 import create_new_key_pair as new_ed25519_key_pair
from libp2p.crypto.x25519 import create_new_key_pair as new_x25519_key_pair
from libp2p.custom_types import TProtocol
from libp2p.network.config import ConnectionConfig
from libp2p.network.stream.exceptions import StreamEOF
from libp2p.peer.peerinfo import PeerInfo
from libp2p.security.noise.transport import PROTOCOL_ID as NOISE_PROTOCOL_ID
from libp2p.security.noise.transport import Transport as NoiseTransport
from libp2p.stream_muxer.yamux.yamux import PROTOCOL_ID as YAMUX_PROTOCOL_ID
from libp2p.stream_muxer.yamux.yamux import Yamux

log = logging.getLogger("libp2p_bench")

ECHO = TProtocol("/zeone-bench/echo/1.0.0")  # echoes everything until EOF
SINK = TProtocol("/zeone-bench/sink/1.0.0")  # 8-byte length header, then counts bytes
MSG_SIZE = 32
CHUNK = 64 * 1024
MIB = 1024 * 1024

HANDSHAKE_DEFINITION = (
    "Latency of client_host.connect(PeerInfo(server_id, [/ip4/127.0.0.1/tcp/PORT])) "
    "with no existing connection: TCP connect + multistream-select(/noise) + Noise XX "
    "(peer ids verified) + multistream-select(/yamux/1.0.0) + yamux/SwarmConn started, "
    "i.e. until the connection is registered and streams can be opened on it. The "
    "stream open itself (new_stream incl. protocol multistream-select + one 32 B echo) "
    "is measured separately as first_stream. Each connection is fully closed on both "
    "sides (client disconnect + server side removed) before the next dial, outside the "
    "timed window. connections_per_second = n / sum(connect latencies); "
    "connections_per_second_wall = n / wall time of the whole sequence including "
    "first_stream and teardown."
)


# --------------------------------------------------------------------------- stats


def summary_ms(samples: Sequence[float]) -> dict[str, Any]:
    return {
        "p50_ms": round(percentile(samples, 50) * 1000, 3),
        "p99_ms": round(percentile(samples, 99) * 1000, 3),
        "mean_ms": round(statistics.fmean(samples) * 1000, 3),
        "min_ms": round(min(samples) * 1000, 3),
        "max_ms": round(max(samples) * 1000, 3),
        "n": len(samples),
    }


def rate(nbytes: int, seconds: float) -> dict[str, Any]:
    return {
        "bytes": nbytes,
        "seconds": round(seconds, 4),
        "mb_per_s": round(nbytes / seconds / 1e6, 2),
        "mib_per_s": round(nbytes / seconds / MIB, 2),
    }


# --------------------------------------------------------------------------- hosts


def make_host(connection_config: ConnectionConfig | None = None) -> Any:
    """A host that offers exactly Noise for security and exactly yamux as muxer."""
    key_pair = new_ed25519_key_pair()
    noise_static = new_x25519_key_pair()
    return new_host(
        key_pair=key_pair,
        sec_opt={
            NOISE_PROTOCOL_ID: NoiseTransport(key_pair, noise_privkey=noise_static.private_key)
        },
        muxer_opt={TProtocol(YAMUX_PROTOCOL_ID): Yamux},
        connection_config=connection_config,
    )


async def read_exactly(stream: Any, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = await stream.read(n - len(buf))
        if not chunk:
            raise RuntimeError(f"stream ended after {len(buf)} of {n} bytes")
        buf += chunk
    return bytes(buf)


class Server:
    """Stream handlers of the listening host; sink completions are timed in-process."""

    def __init__(self) -> None:
        self.sink_done: dict[int, float] = {}
        self.sink_event = trio.Event()
        self.errors: list[str] = []

    async def echo(self, stream: Any) -> None:
        try:
            while True:
                data = await stream.read(CHUNK)
                if not data:
                    break
                await stream.write(data)
        except StreamEOF:
            pass
        except Exception as exc:  # connection teardown races are expected here
            log.debug("echo handler: %r", exc)
        finally:
            with contextlib.suppress(Exception):
                await stream.close()

    async def sink(self, stream: Any) -> None:
        try:
            header = await read_exactly(stream, 8)
            expected = int.from_bytes(header, "big")
            got = 0
            while got < expected:
                data = await stream.read(CHUNK)
                if not data:
                    break
                got += len(data)
            self.sink_done[id(stream)] = time.perf_counter()
            if got != expected:
                self.errors.append(f"sink got {got} of {expected} bytes")
            await stream.write(b"\x01")  # ack, so the client can close cleanly
            self.sink_event.set()
        except Exception as exc:
            self.errors.append(f"sink handler: {exc!r}")
            self.sink_event.set()
        finally:
            with contextlib.suppress(Exception):
                await stream.close()


def connections_to(host: Any, peer_id: Any) -> list[Any]:
    return list(host.get_network().get_connections(peer_id))


async def wait_until(pred: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    # Polls: py-libp2p exposes no event for "the peer's side dropped the connection".
    with trio.move_on_after(timeout):
        while not pred():  # noqa: ASYNC110
            await trio.sleep(0.002)
        return
    raise RuntimeError(f"timed out after {timeout}s waiting for {what}")


def describe_connection(conn: Any) -> dict[str, str]:
    muxed = conn.muxed_conn
    secured = getattr(muxed, "secured_conn", None)
    inner = getattr(secured, "conn", None)
    return {
        "muxed_conn": type(muxed).__name__,
        "secured_conn": type(secured).__name__,
        "secure_io": type(inner).__name__,
    }


# --------------------------------------------------------------------------- phases


async def bench_handshakes(
    client: Any, server: Any, info: PeerInfo, n: int, budget_s: float
) -> dict[str, Any]:
    server_id = server.get_id()
    client_id = client.get_id()
    connect_s: list[float] = []
    stream_s: list[float] = []
    close_s: list[float] = []
    msg = os.urandom(MSG_SIZE)
    start = time.perf_counter()
    for _ in range(n):
        if connections_to(client, server_id) or connections_to(server, client_id):
            raise RuntimeError("handshake: a connection survived the previous teardown")
        t0 = time.perf_counter()
        await client.connect(info)
        t1 = time.perf_counter()
        conns = connections_to(client, server_id)
        if len(conns) != 1:
            raise RuntimeError(f"handshake: expected 1 connection, found {len(conns)}")
        stream = await client.new_stream(server_id, [ECHO])
        await stream.write(msg)
        if await read_exactly(stream, MSG_SIZE) != msg:
            raise RuntimeError("handshake: echo mismatch")
        t2 = time.perf_counter()
        await stream.close()
        await client.disconnect(server_id)
        await wait_until(
            lambda: not connections_to(client, server_id) and not connections_to(server, client_id),
            "both sides to drop the connection",
        )
        t3 = time.perf_counter()
        connect_s.append(t1 - t0)
        stream_s.append(t2 - t1)
        close_s.append(t3 - t2)
        if t3 - start > budget_s:
            break
    wall = time.perf_counter() - start
    result = summary_ms(connect_s)
    result.update(
        n_requested=n,
        stopped_by_budget=len(connect_s) < n,
        budget_s=budget_s,
        connections_per_second=round(len(connect_s) / sum(connect_s), 2),
        connections_per_second_wall=round(len(connect_s) / wall, 2),
        first_stream=summary_ms(stream_s),
        teardown=summary_ms(close_s),
        definition=HANDSHAKE_DEFINITION,
    )
    return result


async def bench_throughput(
    client: Any, server_host: Any, srv: Server, total_bytes: int, streams: int
) -> dict[str, Any]:
    server_id = server_host.get_id()
    per_stream = total_bytes // streams
    payload = os.urandom(CHUNK)
    opened = [await client.new_stream(server_id, [SINK]) for _ in range(streams)]
    srv.sink_done.clear()
    first_write: list[float] = []

    async def pump(stream: Any) -> None:
        first_write.append(time.perf_counter())
        await stream.write(per_stream.to_bytes(8, "big"))
        left = per_stream
        while left > 0:
            step = min(CHUNK, left)
            await stream.write(payload if step == CHUNK else payload[:step])
            left -= step
        ack = await read_exactly(stream, 1)
        if ack != b"\x01":
            raise RuntimeError("sink: bad ack")
        await stream.close()

    async with trio.open_nursery() as nursery:
        for stream in opened:
            nursery.start_soon(pump, stream)
    if srv.errors:
        raise RuntimeError("; ".join(srv.errors))
    if len(srv.sink_done) != streams:
        raise RuntimeError(f"sink: {len(srv.sink_done)} of {streams} streams completed")
    elapsed = max(srv.sink_done.values()) - min(first_write)
    result = rate(per_stream * streams, elapsed)
    result.update(
        streams=streams,
        write_size=CHUNK,
        definition=(
            "client writes an 8-byte length header then the payload in 64 KiB "
            "stream.write calls; time from the first write on any stream to the server "
            "handler having read every byte of every stream (one connection; streams "
            "opened before timing starts). MB = 10^6 bytes."
        ),
    )
    return result


async def bench_rpc(client: Any, server_id: Any, rounds: int) -> dict[str, Any]:
    stream = await client.new_stream(server_id, [ECHO])
    msg = os.urandom(MSG_SIZE)
    samples: list[float] = []
    start = time.perf_counter()
    for _ in range(rounds):
        t0 = time.perf_counter()
        await stream.write(msg)
        if await read_exactly(stream, MSG_SIZE) != msg:
            raise RuntimeError("rpc: echo mismatch")
        samples.append(time.perf_counter() - t0)
    elapsed = time.perf_counter() - start
    await stream.close()
    result = summary_ms(samples)
    result.update(
        round_trips_per_second=round(rounds / elapsed, 1),
        definition=(
            "one long-lived stream: client writes 32 B, server echoes, client reads "
            "32 B; sequential"
        ),
    )
    return result


async def bench_rpc_new_stream(client: Any, server_id: Any, rounds: int) -> dict[str, Any]:
    msg = os.urandom(MSG_SIZE)
    samples: list[float] = []
    start = time.perf_counter()
    for _ in range(rounds):
        t0 = time.perf_counter()
        stream = await client.new_stream(server_id, [ECHO])
        await stream.write(msg)
        if await read_exactly(stream, MSG_SIZE) != msg:
            raise RuntimeError("rpc_new_stream: echo mismatch")
        await stream.close()
        samples.append(time.perf_counter() - t0)
    elapsed = time.perf_counter() - start
    result = summary_ms(samples)
    result.update(
        round_trips_per_second=round(rounds / elapsed, 1),
        definition=(
            "per request: host.new_stream (yamux SYN + multistream-select of the "
            "protocol) + write 32 B + read 32 B echo + stream.close (half-close); "
            "sequential, on an existing connection"
        ),
    )
    return result


# --------------------------------------------------------------------------- main


async def run(args: argparse.Namespace) -> dict[str, Any]:
    listen = [multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")]
    srv = Server()
    server = make_host()
    # Stock client: py-libp2p defaults (max_connections_per_peer=3).
    client = make_host()
    # Same, but max_connections_per_peer=1 so Swarm.dial_peer returns as soon as the
    # first connection is up instead of sitting out its 250 ms happy-eyeballs window.
    client_one = make_host(ConnectionConfig(max_connections_per_peer=1))
    results: dict[str, Any] = {}
    async with contextlib.AsyncExitStack() as stack:
        for host in (server, client, client_one):
            await stack.enter_async_context(host.run(listen))
        server.set_stream_handler(ECHO, srv.echo)
        server.set_stream_handler(SINK, srv.sink)
        addrs = [a for a in server.get_transport_addrs() if "/tcp/" in str(a)]
        if not addrs:
            raise RuntimeError(f"server has no TCP listen address: {server.get_addrs()}")
        info = PeerInfo(server.get_id(), addrs)
        log.info("server %s on %s", server.get_id(), addrs)

        # Sanity check + what was actually negotiated.
        await client.connect(info)
        conns = connections_to(client, server.get_id())
        results["negotiated"] = describe_connection(conns[0])
        await client.disconnect(server.get_id())
        await wait_until(
            lambda: not connections_to(server, client.get_id()), "server to drop warm-up conn"
        )

        log.info("handshake (stock config): up to %d dials", args.handshakes)
        with trio.fail_after(args.handshake_budget + 60):
            results["handshake"] = await bench_handshakes(
                client, server, info, args.handshakes, args.handshake_budget
            )
        results["handshake"]["client_config"] = "py-libp2p defaults (max_connections_per_peer=3)"
        log.info("handshake: %s", {k: results["handshake"][k] for k in ("p50_ms", "n")})

        log.info("handshake (max_connections_per_peer=1): up to %d dials", args.handshakes)
        with trio.fail_after(args.handshake_budget + 60):
            results["handshake_max_conns_1"] = await bench_handshakes(
                client_one, server, info, args.handshakes, args.handshake_budget
            )
        results["handshake_max_conns_1"]["client_config"] = (
            "ConnectionConfig(max_connections_per_peer=1): dial_peer cancels its "
            "happy-eyeballs wait once one connection is up"
        )
        log.info(
            "handshake_max_conns_1: %s",
            {k: results["handshake_max_conns_1"][k] for k in ("p50_ms", "n")},
        )

        await client.connect(info)
        server_id = server.get_id()
        total = args.mib * MIB
        log.info("throughput_1: %d MiB", args.mib)
        with trio.fail_after(args.phase_timeout):
            results["throughput_1"] = await bench_throughput(client, server, srv, total, 1)
        log.info("throughput_1: %s MB/s", results["throughput_1"]["mb_per_s"])
        log.info("throughput_16: %d MiB over 16 streams", args.mib)
        with trio.fail_after(args.phase_timeout):
            results["throughput_16"] = await bench_throughput(client, server, srv, total, 16)
        log.info("throughput_16: %s MB/s", results["throughput_16"]["mb_per_s"])
        log.info("rpc: %d rounds", args.rpc_rounds)
        with trio.fail_after(args.phase_timeout):
            results["rpc"] = await bench_rpc(client, server_id, args.rpc_rounds)
        log.info("rpc: %s rt/s", results["rpc"]["round_trips_per_second"])
        rounds_ns = max(1, args.rpc_rounds // 10)
        log.info("rpc_new_stream: %d rounds", rounds_ns)
        with trio.fail_after(args.phase_timeout):
            results["rpc_new_stream"] = await bench_rpc_new_stream(client, server_id, rounds_ns)
        log.info("rpc_new_stream: %s rt/s", results["rpc_new_stream"]["round_trips_per_second"])
        if len(connections_to(client, server_id)) != 1:
            raise RuntimeError("throughput/rpc did not stay on a single connection")
        log.info("shutting down hosts")
    return results


def cpu_times() -> tuple[int, int] | None:
    """(busy, total) jiffies of the whole machine from /proc/stat; None off Linux."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:9]]
    except (OSError, ValueError):
        return None
    return sum(fields) - fields[3] - fields[4], sum(fields)


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mib", type=int, default=128, help="MiB per throughput run (128)")
    p.add_argument("--handshakes", type=int, default=200, help="dials per handshake run (200)")
    p.add_argument(
        "--handshake-budget",
        type=float,
        default=30.0,
        help="stop a handshake run after this many seconds (30; teardown included)",
    )
    p.add_argument("--rpc-rounds", type=int, default=5000, help="rpc round trips (5000)")
    p.add_argument("--phase-timeout", type=float, default=120.0, help="per phase (120 s)")
    p.add_argument("--timeout", type=float, default=400.0, help="whole run (400 s)")
    p.add_argument("--quick", action="store_true", help="smoke run: tiny numbers")
    p.add_argument("-v", "--verbose", action="store_true", help="libp2p warnings to stderr")
    args = p.parse_args(argv)
    if args.quick:
        args.mib, args.handshakes, args.rpc_rounds = 8, 10, 300
        args.handshake_budget = min(args.handshake_budget, 10.0)
    if args.mib < 1 or args.handshakes < 1 or args.rpc_rounds < 10:
        p.error("--mib >= 1, --handshakes >= 1, --rpc-rounds >= 10")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(
        stream=sys.stderr, level=logging.INFO, format="%(asctime)s %(name)s: %(message)s"
    )
    # libp2p logs teardown races (reset streams, closed sockets) at WARNING/ERROR.
    quiet = logging.WARNING if args.verbose else logging.CRITICAL
    logging.getLogger("libp2p").setLevel(quiet)
    logging.getLogger().setLevel(logging.INFO)
    for name in ("multiaddr", "libp2p"):
        logging.getLogger(name).setLevel(quiet)

    # Last-resort watchdog in case cancellation itself gets stuck in library cleanup.
    def _watchdog(signum: int, frame: Any) -> None:
        sys.stderr.write(f"libp2p_transport: watchdog fired after {args.timeout + 30:.0f}s\n")
        os._exit(3)

    signal.signal(signal.SIGALRM, _watchdog)
    signal.alarm(int(args.timeout + 30))

    async def bounded() -> dict[str, Any]:
        with trio.fail_after(args.timeout):
            return await run(args)

    load_before = os.getloadavg()
    cpu_before = cpu_times()
    started = time.perf_counter()
    try:
        results = trio.run(bounded)
    except trio.TooSlowError:
        sys.stderr.write(f"libp2p_transport: FAILED: timed out ({args.timeout:.0f}s budget)\n")
        return 2
    except BaseException as exc:  # report anything, incl. ExceptionGroup
        if isinstance(exc, KeyboardInterrupt):
            raise
        sys.stderr.write(f"libp2p_transport: FAILED: {exc!r}\n")
        if isinstance(exc, BaseExceptionGroup):
            for sub in exc.exceptions:
                sys.stderr.write(f"  - {sub!r}\n")
        return 1
    finally:
        signal.alarm(0)
    cpu_after = cpu_times()
    busy_pct = None
    if cpu_before and cpu_after and cpu_after[1] > cpu_before[1]:
        busy = cpu_after[0] - cpu_before[0]
        busy_pct = round(100 * busy / (cpu_after[1] - cpu_before[1]), 1)

    out = {
        "implementation": "py-libp2p",
        "libp2p_version": importlib.metadata.version("libp2p"),
        "trio_version": trio.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        # Other processes on the box inflate tail latencies; keep the evidence.
        "loadavg_1m_before_after": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
        # Whole-machine CPU busy % during the run (this process included; it uses
        # about one core, i.e. 100/cpus %). Higher means other load competed.
        "machine_cpu_busy_pct": busy_pct,
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "transport": "tcp 127.0.0.1, one process",
        "security": str(NOISE_PROTOCOL_ID),
        "muxer": str(YAMUX_PROTOCOL_ID),
        "params": {
            "mib": args.mib,
            "handshakes": args.handshakes,
            "handshake_budget_s": args.handshake_budget,
            "rpc_rounds": args.rpc_rounds,
            "rpc_new_stream_rounds": max(1, args.rpc_rounds // 10),
            "quick": args.quick,
        },
        **results,
        "total_seconds": round(time.perf_counter() - started, 2),
    }
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
