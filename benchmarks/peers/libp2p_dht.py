"""py-libp2p Kademlia DHT (`libp2p.kad_dht`, Trio + Noise + yamux) benchmark, next to ZEONE's.

Standalone: run it with the interpreter of a venv that has ``libp2p`` installed (it does not
import zeone)::

    /tmp/lp2p/bin/python benchmarks/peers/libp2p_dht.py --nodes 50

N hosts in one trio.run, each listening on its own TCP port on 127.0.0.1 with Noise and yamux only
(the stack of peers/libp2p_transport.py) and a `KadDHT` in server mode with a permissive validator
for the `/bench/` namespace. Same phases as benchmarks/dht.py: sequential join through node 0,
sequential puts and gets, then 25% of the nodes stopped (their task cancelled: listener and
connections closed, no goodbye) and every key read back with 8 gets in flight, then fresh puts.
py-libp2p is slow enough that every phase has a time budget (`--phase-budget`); a phase that runs
out reports the operations it finished (`n`); those it cut off (`not_done`) count as failures.
Prints ONE JSON object on stdout.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import logging
import math
import os
import random
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

# benchmarks/common.py has no dependency on zeone, so this venv can share its statistics.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import multiaddr
import trio
from common import cpu_seconds, op_summary, percentile, rss_kib
from libp2p import new_host
from libp2p.crypto.ed25519 import create_new_key_pair as new_ed25519_key_pair
from libp2p.crypto.x25519 import create_new_key_pair as new_x25519_key_pair
from libp2p.custom_types import TProtocol
from libp2p.kad_dht.kad_dht import DHTMode, KadDHT
from libp2p.network.config import ConnectionConfig
from libp2p.peer.peerinfo import PeerInfo
from libp2p.records.validator import Validator
from libp2p.security.noise.transport import PROTOCOL_ID as NOISE_PROTOCOL_ID
from libp2p.security.noise.transport import Transport as NoiseTransport
from libp2p.stream_muxer.yamux.yamux import PROTOCOL_ID as YAMUX_PROTOCOL_ID
from libp2p.stream_muxer.yamux.yamux import Yamux
from libp2p.tools.anyio_service import background_trio_service

CHURN_FRACTION = 0.25
CHURN_CONCURRENCY = 8
LISTEN = "/ip4/127.0.0.1/tcp/0"


class AcceptAll(Validator):
    def validate(self, key: str, value: bytes) -> None:
        if not value:
            raise ValueError("empty value")

    def select(self, key: str, values: list[bytes]) -> int:
        return 0


def make_host(max_conns: int | None) -> Any:
    key_pair = new_ed25519_key_pair()
    noise_static = new_x25519_key_pair()
    config = ConnectionConfig(max_connections_per_peer=max_conns) if max_conns else None
    return new_host(
        key_pair=key_pair,
        sec_opt={
            NOISE_PROTOCOL_ID: NoiseTransport(key_pair, noise_privkey=noise_static.private_key)
        },
        muxer_opt={TProtocol(YAMUX_PROTOCOL_ID): Yamux},
        connection_config=config,
    )


class BenchNode:
    def __init__(self) -> None:
        self.scope = trio.CancelScope()
        self.ready = trio.Event()
        self.dht: KadDHT | None = None
        self.info: PeerInfo | None = None
        self.join_s: float | None = None
        self.error: str | None = None

    async def run(self, seed: PeerInfo | None, max_conns: int | None) -> None:
        started = time.perf_counter()
        with self.scope:
            try:
                host = make_host(max_conns)
                async with host.run([multiaddr.Multiaddr(LISTEN)]):
                    dht = KadDHT(host, DHTMode.SERVER)
                    dht.register_validator("bench", AcceptAll())
                    addrs = [a for a in host.get_transport_addrs() if "/tcp/" in str(a)]
                    self.info = PeerInfo(host.get_id(), addrs)
                    self.dht = dht
                    if seed is not None:
                        await host.connect(seed)
                        await dht.routing_table.add_peer(seed)
                        await dht.refresh_routing_table()
                        self.join_s = time.perf_counter() - started
                    async with background_trio_service(dht):
                        self.ready.set()
                        await trio.sleep_forever()
            except Exception as exc:
                self.error = repr(exc)[:300]
            finally:
                self.ready.set()


async def timed(fn: Any, timeout: float) -> tuple[Any, float, str | None]:
    started = time.perf_counter()
    try:
        with trio.fail_after(timeout):
            value = await fn()
        return value, time.perf_counter() - started, None
    except Exception as exc:  # counted as a failed operation
        return None, time.perf_counter() - started, repr(exc)[:200]


async def run_ops(
    jobs: Sequence[Any], concurrency: int, budget: float
) -> tuple[list[tuple[bool, float]], int, float]:
    """Run the jobs (async callables returning (ok, seconds)) within `budget` seconds; returns
    the finished samples, how many were not finished, and the wall time."""
    done: list[tuple[bool, float]] = []
    limiter = trio.CapacityLimiter(concurrency)
    started = time.perf_counter()

    async def one(job: Any) -> None:
        async with limiter:
            done.append(await job())

    with trio.move_on_after(budget):
        async with trio.open_nursery() as nursery:
            for job in jobs:
                nursery.start_soon(one, job)
    return done, len(jobs) - len(done), time.perf_counter() - started


async def run(args: argparse.Namespace) -> dict[str, Any]:
    rng = random.Random(args.seed)
    rss_before = rss_kib()
    cpu_before = cpu_seconds()
    nodes: list[BenchNode] = []
    result: dict[str, Any] = {}
    async with trio.open_nursery() as nursery:
        try:
            result = await phases(args, rng, nursery, nodes, rss_before, cpu_before)
        finally:
            nursery.cancel_scope.cancel()
    return result


async def phases(
    args: argparse.Namespace,
    rng: random.Random,
    nursery: trio.Nursery,
    nodes: list[BenchNode],
    rss_before: int,
    cpu_before: float,
) -> dict[str, Any]:
    n = args.nodes
    seed = BenchNode()
    nursery.start_soon(seed.run, None, args.max_conns_per_peer)
    await seed.ready.wait()
    if seed.info is None:
        raise RuntimeError(f"seed did not start: {seed.error}")
    nodes.append(seed)

    joins, tables = [], []
    started = time.perf_counter()
    join_failures = 0
    with trio.move_on_after(args.phase_budget * 2) as join_scope:
        for _ in range(1, n):
            node = BenchNode()
            nursery.start_soon(node.run, seed.info, args.max_conns_per_peer)
            with trio.move_on_after(60):
                await node.ready.wait()
            if node.join_s is None:
                join_failures += 1
                node.scope.cancel()
                continue
            joins.append(node.join_s)
            tables.append(node.dht.get_routing_table_size())
            nodes.append(node)
    bootstrap_total = time.perf_counter() - started
    if join_scope.cancelled_caught:
        log(f"libp2p_dht: join phase budget hit after {len(nodes)} nodes")
    n = len(nodes)
    cpu_joined = cpu_seconds()
    await trio.sleep(args.idle)
    cpu_idle = cpu_seconds()
    log(f"libp2p_dht: {n} nodes up in {bootstrap_total:.1f} s")

    keys = [f"/bench/{nodes[i % n].info.peer_id}/bench-{i}" for i in range(args.ops)]
    values = [os.urandom(32) for _ in range(args.ops)]

    def put_job(node: BenchNode, key: str, value: bytes, timeout: float) -> Any:
        async def job() -> tuple[bool, float]:
            _, elapsed, error = await timed(lambda: node.dht.put_value(key, value), timeout)
            return error is None, elapsed

        return job

    def get_job(node: BenchNode, i: int, timeout: float, local: list[bool] | None) -> Any:
        async def job() -> tuple[bool, float]:
            if local is not None:
                local.append(node.dht.value_store.get(keys[i].encode()) is not None)
            got, elapsed, _ = await timed(lambda: node.dht.get_value(keys[i]), timeout)
            return got == values[i], elapsed

        return job

    put_samples, puts_unfinished, _ = await run_ops(
        [put_job(nodes[i % n], keys[i], values[i], 30) for i in range(args.ops)],
        1,
        args.phase_budget,
    )
    log(f"libp2p_dht: put {op_summary(put_samples, puts_unfinished)}")
    stored = len(put_samples)
    cpu_put = cpu_seconds()
    local_flags: list[bool] = []
    getters = [rng.choice([j for j in range(n) if j != i % n]) for i in range(stored)]
    get_samples, gets_unfinished, _ = await run_ops(
        [get_job(nodes[getters[i]], i, 30, local_flags) for i in range(stored)],
        1,
        args.phase_budget,
    )
    network = [s for s, local in zip(get_samples, local_flags, strict=False) if not local]
    log(f"libp2p_dht: get {op_summary(get_samples, gets_unfinished)}")
    cpu_ops = cpu_seconds()
    rss_after = rss_kib()

    # -- churn ------------------------------------------------------------------------------
    victims = set(rng.sample(range(1, n), math.ceil(args.nodes * CHURN_FRACTION)))
    for index in victims:
        nodes[index].scope.cancel()
    await trio.lowlevel.checkpoint()
    survivors = [nodes[i] for i in range(n) if i not in victims]
    churn_started = time.perf_counter()
    churn_get_samples, churn_gets_unfinished, churn_get_wall = await run_ops(
        [get_job(rng.choice(survivors), i, args.churn_op_timeout, None) for i in range(stored)],
        CHURN_CONCURRENCY,
        args.phase_budget,
    )
    log(f"libp2p_dht: after churn get {op_summary(churn_get_samples, churn_gets_unfinished)}")
    churn_put_jobs = []
    for i in range(args.churn_puts):
        node = survivors[i % len(survivors)]
        key = f"/bench/{node.info.peer_id}/after-{i}"
        churn_put_jobs.append(put_job(node, key, os.urandom(32), args.churn_op_timeout))
    churn_put_samples, churn_puts_unfinished, churn_put_wall = await run_ops(
        churn_put_jobs, CHURN_CONCURRENCY, args.phase_budget
    )
    churn_delay = time.perf_counter() - churn_started

    return {
        "implementation": "libp2p",
        "version": importlib.metadata.version("libp2p"),
        "nodes": n,
        "nodes_requested": args.nodes,
        "join_failures": join_failures,
        "processes": 1,
        "transport": "tcp 127.0.0.1 + Noise + yamux, multistream-select per stream",
        "connection_config": (
            f"max_connections_per_peer={args.max_conns_per_peer}"
            if args.max_conns_per_peer
            else "py-libp2p defaults"
        ),
        "store": "in-memory ValueStore",
        "join": {
            "p50_ms": round(percentile(joins, 50) * 1000, 3) if joins else None,
            "p95_ms": round(percentile(joins, 95) * 1000, 3) if joins else None,
            "max_ms": round(max(joins) * 1000, 3) if joins else None,
            "n": len(joins),
            "table_at_join_p50": percentile(tables, 50) if tables else None,
            "definition": "new host + host.run(listen) + connect(node 0) + "
            "routing_table.add_peer(node 0) + KadDHT.refresh_routing_table() (own-id lookup "
            "and one per non-empty bucket); nodes join one at a time",
        },
        "bootstrap_total_s": round(bootstrap_total, 3),
        "put": {
            **op_summary(put_samples, puts_unfinished),
            "definition": "KadDHT.put_value('/bench/<id>/bench-i', 32 B): network FIND_NODE "
            "then PUT_VALUE to the closest peers, ALPHA at a time; success = no exception",
        },
        "get": {
            **op_summary(get_samples, gets_unfinished),
            "local_hits": sum(local_flags),
            "network": op_summary(network),
            "definition": "KadDHT.get_value from a random other node; answered locally when "
            "the node holds a replica (local_hits), else a network lookup",
        },
        "churn": {
            "killed": len(victims),
            "killed_fraction": round(len(victims) / args.nodes, 3),
            "how": "the node's task cancelled (listener and connections closed, no goodbye)",
            "get": {
                **op_summary(churn_get_samples, churn_gets_unfinished),
                "wall_s": round(churn_get_wall, 3),
            },
            "put": {
                **op_summary(churn_put_samples, churn_puts_unfinished),
                "wall_s": round(churn_put_wall, 3),
            },
            "concurrency": CHURN_CONCURRENCY,
            "op_timeout_s": args.churn_op_timeout,
            "seconds_after_kill": round(churn_delay, 3),
        },
        "cpu": {
            "join_s_per_node": round((cpu_joined - cpu_before) / n, 4),
            "idle_pct_per_node": round((cpu_idle - cpu_joined) / args.idle / n * 100, 3),
            "ops_s_per_node": round((cpu_ops - cpu_idle) / n, 4),
            "total_s_per_node": round((cpu_ops - cpu_before) / n, 4),
            "put_ms_per_op": round((cpu_put - cpu_idle) / max(1, len(put_samples)) * 1000, 3),
            "get_ms_per_op": round((cpu_ops - cpu_put) / max(1, len(get_samples)) * 1000, 3),
        },
        "rss": {
            "kib_per_node": round(rss_after / n, 1),
            "kib_per_node_incremental": round((rss_after - rss_before) / n, 1),
            "process_baseline_kib": rss_before,
        },
        "routing_table_p50": percentile(
            [s.dht.get_routing_table_size() for s in survivors if s.dht], 50
        ),
    }


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=50)
    parser.add_argument("--ops", type=int, default=200)
    parser.add_argument("--churn-puts", type=int, default=16)
    parser.add_argument("--churn-op-timeout", type=float, default=30.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--idle", type=float, default=5.0)
    parser.add_argument("--phase-budget", type=float, default=45.0, help="per phase (s)")
    parser.add_argument(
        "--max-conns-per-peer",
        type=int,
        default=None,
        help="ConnectionConfig(max_connections_per_peer=...); default: py-libp2p's own",
    )
    parser.add_argument("--timeout", type=float, default=400.0, help="whole run (s)")
    parser.add_argument("-v", "--verbose", action="store_true", help="libp2p warnings to stderr")
    args = parser.parse_args(argv)
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(message)s")
    quiet = logging.WARNING if args.verbose else logging.CRITICAL
    for name in ("libp2p", "multiaddr", "kademlia-example"):
        logging.getLogger(name).setLevel(quiet)

    def watchdog(signum: int, frame: Any) -> None:
        sys.stderr.write(f"libp2p_dht: watchdog fired after {args.timeout + 30:.0f}s\n")
        os._exit(3)

    signal.signal(signal.SIGALRM, watchdog)
    signal.alarm(int(args.timeout + 30))

    async def bounded() -> dict[str, Any]:
        with trio.fail_after(args.timeout):
            return await run(args)

    started = time.perf_counter()
    try:
        results = trio.run(bounded)
    except BaseException as exc:  # report anything, incl. ExceptionGroup
        if isinstance(exc, KeyboardInterrupt):
            raise
        sys.stderr.write(f"libp2p_dht: FAILED: {exc!r}\n")
        if isinstance(exc, BaseExceptionGroup):
            for sub in exc.exceptions:
                sys.stderr.write(f"  - {sub!r}\n")
        return 1
    finally:
        signal.alarm(0)
    results["total_seconds"] = round(time.perf_counter() - started, 2)
    print(json.dumps(results, indent=2))
    sys.stdout.flush()
    # Cancelled hosts can leave non-daemon threads behind; do not wait for them.
    os._exit(0)


if __name__ == "__main__":
    sys.exit(main())
