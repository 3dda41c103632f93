"""Transport benchmark: ZEONE (TCP + Noise + frames/RPC) vs raw Trio TCP vs py-libp2p, one run.

    python3 -m uv run python benchmarks/transport.py [--quick] [--libp2p-python PATH | --no-libp2p]

Measured on loopback, everything in this one run so the ratios compare like with like:

- handshake: sequential dial latency (TCP connect + Noise XX + HELLO) p50/p99 and connections/s,
  against a bare TCP connect;
- throughput: one encrypted channel, 64 KiB writes, vs raw TCP (target >= 50% of raw);
- RPC: sequential request/response round trips vs a raw TCP ping-pong (target >= 60% of raw);
- py-libp2p (Noise + yamux) measured by `peers/libp2p_transport.py` in its own virtualenv
  (created on first use under ~/.cache/zeone-bench), target ZEONE >= 3x its throughput and RPC rate;
- memory per idle connection and 1,000 concurrent connections to one node process.

Writes results/transport.json and results/transport.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import venv
from pathlib import Path
from typing import Any

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import markdown_table, rss_kib, summary_ms, write_results

from zeone.identity import Identity
from zeone.net.connection import Connection, ConnectionLimits
from zeone.net.noise import Hello, secure_accept, secure_dial
from zeone.rpc import Request, Router

HERE = Path(__file__).resolve().parent
CHUNK = 64 * 1024
LIBP2P_VENV = Path.home() / ".cache" / "zeone-bench" / "libp2p"


# -- raw TCP baselines ------------------------------------------------------------------------


async def raw_handshake(n: int) -> list[float]:
    samples = []
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(trio.serve_tcp, _close_handler, 0)
        port = listeners[0].socket.getsockname()[1]
        for _ in range(n):
            started = time.perf_counter()
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            samples.append(time.perf_counter() - started)
            await stream.aclose()
        nursery.cancel_scope.cancel()
    return samples


async def _close_handler(stream: trio.abc.Stream) -> None:
    await stream.aclose()


async def raw_throughput(total: int) -> float:
    done = trio.Event()
    received = 0

    async def sink(stream: trio.abc.Stream) -> None:
        nonlocal received
        while received < total:
            data = await stream.receive_some(256 * 1024)
            if not data:
                break
            received += len(data)
        done.set()

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(trio.serve_tcp, sink, 0)
        port = listeners[0].socket.getsockname()[1]
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        payload = os.urandom(CHUNK)
        started = time.perf_counter()
        for _ in range(total // CHUNK):
            await stream.send_all(payload)
        await done.wait()
        elapsed = time.perf_counter() - started
        await stream.aclose()
        nursery.cancel_scope.cancel()
    return total / elapsed / 1e6


async def raw_rpc(rounds: int) -> tuple[float, list[float]]:
    async def echo(stream: trio.abc.Stream) -> None:
        buffer = b""
        while True:
            data = await stream.receive_some(65536)
            if not data:
                return
            buffer += data
            while len(buffer) >= 32:
                await stream.send_all(buffer[:32])
                buffer = buffer[32:]

    samples = []
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(trio.serve_tcp, echo, 0)
        port = listeners[0].socket.getsockname()[1]
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        message = os.urandom(32)
        started = time.perf_counter()
        for _ in range(rounds):
            t = time.perf_counter()
            await stream.send_all(message)
            got = b""
            while len(got) < 32:
                got += await stream.receive_some(32 - len(got))
            samples.append(time.perf_counter() - t)
        elapsed = time.perf_counter() - started
        await stream.aclose()
        nursery.cancel_scope.cancel()
    return rounds / elapsed, samples


# -- ZEONE ---------------------------------------------------------------------------------------


async def _zeone_server(nursery: trio.Nursery, identity: Identity, on_channel) -> int:
    async def handle(stream: trio.abc.Stream) -> None:
        channel = await secure_accept(stream, identity, Hello())
        await on_channel(channel)

    listeners = await nursery.start(trio.serve_tcp, handle, 0)
    return listeners[0].socket.getsockname()[1]


async def zeone_handshake(n: int) -> list[float]:
    server_id, client_id = Identity.generate(), Identity.generate()

    async def idle(channel) -> None:
        await channel.aclose()

    samples = []
    async with trio.open_nursery() as nursery:
        port = await _zeone_server(nursery, server_id, idle)
        for _ in range(n):
            started = time.perf_counter()
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            channel = await secure_dial(stream, client_id, Hello(), server_id.node_id)
            samples.append(time.perf_counter() - started)
            await channel.aclose()
        nursery.cancel_scope.cancel()
    return samples


async def zeone_throughput(total: int) -> float:
    server_id, client_id = Identity.generate(), Identity.generate()
    done = trio.Event()
    received = 0

    async def sink(channel) -> None:
        nonlocal received
        while received < total:
            data = await channel.receive_some()
            if not data:
                break
            received += len(data)
        done.set()

    async with trio.open_nursery() as nursery:
        port = await _zeone_server(nursery, server_id, sink)
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        channel = await secure_dial(stream, client_id, Hello(), server_id.node_id)
        payload = os.urandom(CHUNK)
        started = time.perf_counter()
        for _ in range(total // CHUNK):
            await channel.send_all(payload)
        await done.wait()
        elapsed = time.perf_counter() - started
        await channel.aclose()
        nursery.cancel_scope.cancel()
    return total / elapsed / 1e6


async def zeone_rpc(rounds: int) -> tuple[float, list[float]]:
    server_id, client_id = Identity.generate(), Identity.generate()
    router = Router()

    async def echo(request: Request) -> Any:
        return request.payload

    router.register("/bench/echo/1", echo, owner="bench")
    limits = ConnectionLimits(request_rate=1e9)

    async def serve(channel) -> None:
        conn = Connection(channel, outbound=False, address="", router=router, limits=limits)
        await conn.run()

    samples = []
    async with trio.open_nursery() as nursery:
        port = await _zeone_server(nursery, server_id, serve)
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        channel = await secure_dial(stream, client_id, Hello(), server_id.node_id)
        conn = Connection(channel, outbound=True, address="", router=Router(), limits=limits)
        await nursery.start(conn.run)
        message = os.urandom(32)
        started = time.perf_counter()
        for _ in range(rounds):
            t = time.perf_counter()
            await conn.request("/bench/echo/1", message)
            samples.append(time.perf_counter() - t)
        elapsed = time.perf_counter() - started
        nursery.cancel_scope.cancel()
    return rounds / elapsed, samples


async def zeone_streams(total: int, streams: int) -> float:
    """Aggregate MB/s of ``streams`` multiplexed streams sharing ``total`` bytes (full stack)."""
    server_id, client_id = Identity.generate(), Identity.generate()
    router = Router()
    received = 0
    done = trio.Event()

    async def sink(_peer: Any, stream: Any) -> None:
        nonlocal received
        while data := await stream.receive_some():
            received += len(data)
            if received >= total:
                done.set()

    router.register_stream("/bench/sink/1", sink, owner="bench")
    limits = ConnectionLimits(request_rate=1e9)

    async def serve(channel) -> None:
        conn = Connection(channel, outbound=False, address="", router=router, limits=limits)
        await conn.run()

    async with trio.open_nursery() as nursery:
        port = await _zeone_server(nursery, server_id, serve)
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        channel = await secure_dial(stream, client_id, Hello(), server_id.node_id)
        conn = Connection(channel, outbound=True, address="", router=Router(), limits=limits)
        await nursery.start(conn.run)
        opened = [await conn.open_stream("/bench/sink/1") for _ in range(streams)]
        payload = os.urandom(CHUNK)
        per_stream = total // streams // CHUNK

        async def write(s: Any) -> None:
            for _ in range(per_stream):
                await s.send_all(payload)

        started = time.perf_counter()
        async with trio.open_nursery() as writers:
            for s in opened:
                writers.start_soon(write, s)
        await done.wait()
        elapsed = time.perf_counter() - started
        nursery.cancel_scope.cancel()
    return total / elapsed / 1e6


# -- memory per idle connection and 1,000 connections to one node process ------------------------


NODE_SCRIPT = """
import sys, trio
from zeone.identity import Identity
from zeone.net.noise import Hello, secure_accept
identity = Identity.from_seed(bytes(32))
channels = []
async def handle(stream):
    channels.append(await secure_accept(stream, identity, Hello()))
    await trio.sleep_forever()
async def main():
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    print(listeners[0].socket.getsockname()[1], flush=True)
    await trio.serve_listeners(handle, listeners)
trio.run(main)
"""


async def many_connections(count: int) -> dict[str, Any]:
    process = await trio.lowlevel.open_process(
        [sys.executable, "-c", NODE_SCRIPT], stdout=subprocess.PIPE
    )
    try:
        port = int((await process.stdout.receive_some(64)).decode().strip())
        await trio.sleep(0.2)
        before = rss_kib(process.pid)
        server_id = Identity.from_seed(bytes(32)).node_id
        client = Identity.generate()
        channels = []
        started = time.perf_counter()
        limiter = trio.CapacityLimiter(32)

        async def one() -> None:
            async with limiter:
                stream = await trio.open_tcp_stream("127.0.0.1", port)
                channels.append(await secure_dial(stream, client, Hello(), server_id))

        async with trio.open_nursery() as nursery:
            for _ in range(count):
                nursery.start_soon(one)
        elapsed = time.perf_counter() - started
        await trio.sleep(0.5)
        after = rss_kib(process.pid)
        for channel in channels:
            await trio.aclose_forcefully(channel)
        return {
            "connections": len(channels),
            "seconds_to_open": round(elapsed, 3),
            "server_rss_before_kib": before,
            "server_rss_after_kib": after,
            "kib_per_idle_connection": round((after - before) / max(1, len(channels)), 2),
        }
    finally:
        process.kill()
        await process.wait()


# -- py-libp2p ------------------------------------------------------------------------------------


def libp2p_python(explicit: str | None) -> Path | None:
    if explicit:
        return Path(explicit)
    python = LIBP2P_VENV / "bin" / "python"
    if not python.exists():
        print(f"setting up py-libp2p in {LIBP2P_VENV} ...", file=sys.stderr)
        venv.EnvBuilder(with_pip=True).create(LIBP2P_VENV)
        result = subprocess.run([python, "-m", "pip", "install", "-q", "libp2p"], check=False)
        if result.returncode != 0:
            print("py-libp2p did not install; skipping it", file=sys.stderr)
            return None
    return python


def run_libp2p(python: Path, quick: bool, mib: int, rounds: int, handshakes: int) -> dict | None:
    args = [str(python), str(HERE / "peers" / "libp2p_transport.py")]
    args += (
        ["--quick"]
        if quick
        else ["--mib", str(mib), "--rpc-rounds", str(rounds), "--handshakes", str(handshakes)]
    )
    result = subprocess.run(args, capture_output=True, text=True, timeout=900, check=False)
    if result.returncode != 0:
        print("py-libp2p benchmark failed:\n" + result.stderr[-2000:], file=sys.stderr)
        return None
    return json.loads(result.stdout)


# -- main ----------------------------------------------------------------------------------------


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    total = args.mib * 1024 * 1024
    results: dict[str, Any] = {"settings": vars(args).copy()}
    raw_hs = await raw_handshake(args.handshakes)
    zeone_hs = await zeone_handshake(args.handshakes)
    results["handshake"] = {
        "raw_tcp": {
            **summary_ms(raw_hs),
            "connections_per_second": round(len(raw_hs) / sum(raw_hs), 1),
        },
        "zeone": {
            **summary_ms(zeone_hs),
            "connections_per_second": round(len(zeone_hs) / sum(zeone_hs), 1),
        },
    }
    results["throughput_mb_s"] = {
        "raw_tcp": round(await raw_throughput(total), 1),
        "zeone_channel": round(await zeone_throughput(total), 1),
        "zeone_1_stream": round(await zeone_streams(total, 1), 1),
        "zeone_16_streams": round(await zeone_streams(total, 16), 1),
    }
    raw_rate, raw_samples = await raw_rpc(args.rpc_rounds)
    zeone_rate, zeone_samples = await zeone_rpc(args.rpc_rounds)
    results["rpc"] = {
        "raw_tcp": {"round_trips_per_second": round(raw_rate), **summary_ms(raw_samples)},
        "zeone": {"round_trips_per_second": round(zeone_rate), **summary_ms(zeone_samples)},
    }
    results["connections"] = await many_connections(args.connections)
    return results


def report(results: dict[str, Any]) -> str:
    hs, tp, rpc = results["handshake"], results["throughput_mb_s"], results["rpc"]
    lp = results.get("libp2p") or {}
    ours_rpc = rpc["zeone"]["round_trips_per_second"]
    rows = [
        [
            "handshake p50 / p99 (ms)",
            f"{hs['zeone']['p50_ms']} / {hs['zeone']['p99_ms']}",
            f"{hs['raw_tcp']['p50_ms']} / {hs['raw_tcp']['p99_ms']} (TCP connect only)",
            _lp(lp, "handshake", lambda h: f"{h['p50_ms']} / {h['p99_ms']}"),
            "",
        ],
        [
            "connections/s (sequential)",
            hs["zeone"]["connections_per_second"],
            hs["raw_tcp"]["connections_per_second"],
            _lp(lp, "handshake", lambda h: h["connections_per_second"]),
            "",
        ],
        [
            "throughput, 1 channel (MB/s)",
            tp["zeone_channel"],
            tp["raw_tcp"],
            _lp(lp, "throughput_1", lambda t: t.get("mb_per_s", t)),
            f"{tp['zeone_channel'] / tp['raw_tcp']:.0%} of raw (target >= 50%)"
            + _ratio(tp["zeone_channel"], lp, "throughput_1", "mb_per_s"),
        ],
        [
            "throughput, 1 mux stream (MB/s)",
            tp["zeone_1_stream"],
            tp["raw_tcp"],
            _lp(lp, "throughput_1", lambda t: t.get("mb_per_s", t)),
            f"{tp['zeone_1_stream'] / tp['raw_tcp']:.0%} of raw (target >= 50%)"
            + _ratio(tp["zeone_1_stream"], lp, "throughput_1", "mb_per_s"),
        ],
        [
            "throughput, 16 mux streams (MB/s)",
            tp["zeone_16_streams"],
            tp["raw_tcp"],
            _lp(lp, "throughput_16", lambda t: t.get("mb_per_s", t)),
            _ratio(tp["zeone_16_streams"], lp, "throughput_16", "mb_per_s").removeprefix("; "),
        ],
        [
            "sequential RPC (round trips/s)",
            rpc["zeone"]["round_trips_per_second"],
            rpc["raw_tcp"]["round_trips_per_second"],
            _lp(lp, "rpc", lambda r: r["round_trips_per_second"]),
            f"{ours_rpc / rpc['raw_tcp']['round_trips_per_second']:.0%} of raw (target >= 60%)"
            + _ratio(rpc["zeone"]["round_trips_per_second"], lp, "rpc", "round_trips_per_second"),
        ],
    ]
    conns = results["connections"]
    table = markdown_table(["metric", "ZEONE", "raw Trio TCP", "py-libp2p", "ratio"], rows)
    table += (
        f"\n\n{conns['connections']} concurrent connections to one node process opened in "
        f"{conns['seconds_to_open']} s; server memory "
        f"{conns['kib_per_idle_connection']} KiB per idle connection "
        f"(RSS {conns['server_rss_before_kib']} -> {conns['server_rss_after_kib']} KiB)."
    )
    return table


def _lp(lp: dict, key: str, fmt) -> str:
    return str(fmt(lp[key])) if key in lp else "n/a"


def _ratio(ours: float, lp: dict, key: str, field: str) -> str:
    if key not in lp or not lp[key].get(field):
        return ""
    return f"; {ours / lp[key][field]:.1f}x py-libp2p (target >= 3x)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small numbers for a smoke run")
    parser.add_argument("--mib", type=int, default=512)
    parser.add_argument("--handshakes", type=int, default=300)
    parser.add_argument("--rpc-rounds", type=int, default=10000)
    parser.add_argument("--connections", type=int, default=1000)
    parser.add_argument("--libp2p-python", help="python of a virtualenv with libp2p installed")
    parser.add_argument("--no-libp2p", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.mib, args.handshakes, args.rpc_rounds, args.connections = 32, 50, 1000, 100
    results = trio.run(measure, args)
    if not args.no_libp2p:
        python = libp2p_python(args.libp2p_python)
        if python is not None:
            results["libp2p"] = run_libp2p(
                python, args.quick, args.mib // 4, args.rpc_rounds // 2, args.handshakes // 2
            )
    table = report(results)
    path = write_results("transport-quick" if args.quick else "transport", results, table)
    print(table)
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
