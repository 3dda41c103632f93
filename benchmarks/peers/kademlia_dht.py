"""kademlia (PyPI `kademlia`, asyncio over UDP) DHT benchmark, the peer run next to ZEONE's.

Standalone: run it with the interpreter of a venv that has ``kademlia`` installed (it does not
import zeone)::

    ~/.cache/zeone-bench/kademlia/bin/python benchmarks/peers/kademlia_dht.py --nodes 50

N `kademlia.network.Server`s (k=20, alpha=3, the defaults) in one asyncio loop, each on its own
UDP socket on 127.0.0.1, which is how the library's users run many nodes. Same phases as
benchmarks/dht.py: sequential join through node 0, sequential puts and gets, then 25% of the
nodes stopped (`Server.stop()`: socket closed, no goodbye) and every key read back with 8 gets in
flight, then fresh puts. Prints ONE JSON object on stdout; exits non-zero on failure.
"""

from __future__ import annotations

import argparse
import asyncio
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
from common import cpu_seconds, op_summary, percentile, rss_kib
from kademlia.network import Server
from kademlia.utils import digest

CHURN_FRACTION = 0.25
CHURN_CONCURRENCY = 8
HOST = "127.0.0.1"


def table_size(server: Server) -> int:
    return sum(len(bucket.get_nodes()) for bucket in server.protocol.router.buckets)


async def timed(coro: Any, timeout: float) -> tuple[Any, float, str | None]:
    started = time.perf_counter()
    try:
        value = await asyncio.wait_for(coro, timeout)
        return value, time.perf_counter() - started, None
    except Exception as exc:  # counted as a failed operation
        return None, time.perf_counter() - started, repr(exc)[:200]


async def run(args: argparse.Namespace) -> dict[str, Any]:
    rng = random.Random(args.seed)
    n = args.nodes
    rss_before = rss_kib()
    cpu_before = cpu_seconds()
    servers: list[Server] = []
    try:
        seed = Server()
        await seed.listen(0, interface=HOST)
        servers.append(seed)
        seed_port = seed.transport.get_extra_info("sockname")[1]

        joins, tables = [], []
        started = time.perf_counter()
        for _ in range(1, n):
            t0 = time.perf_counter()
            server = Server()
            await server.listen(0, interface=HOST)
            await asyncio.wait_for(server.bootstrap([(HOST, seed_port)]), 30)
            joins.append(time.perf_counter() - t0)
            tables.append(table_size(server))
            servers.append(server)
        bootstrap_total = time.perf_counter() - started
        cpu_joined = cpu_seconds()
        await asyncio.sleep(args.idle)
        cpu_idle = cpu_seconds()

        keys, values, put_samples = [], [], []
        for i in range(args.ops):
            publisher = servers[i % n]
            key = f"{publisher.node.id.hex()}/bench-{i}"
            value = os.urandom(32)
            ok, elapsed, _ = await timed(publisher.set(key, value), 30)
            keys.append(key)
            values.append(value)
            put_samples.append((ok is True, elapsed))
        cpu_put = cpu_seconds()
        get_samples, network_samples = [], []
        for i in range(args.ops):
            getter = servers[rng.choice([j for j in range(n) if j != i % n])]
            local = getter.storage.get(digest(keys[i])) is not None
            got, elapsed, _ = await timed(getter.get(keys[i]), 30)
            get_samples.append((got == values[i], elapsed))
            if not local:
                network_samples.append(get_samples[-1])
        cpu_ops = cpu_seconds()
        rss_after = rss_kib()

        # -- churn ------------------------------------------------------------------------------
        victims = set(rng.sample(range(1, n), math.ceil(n * CHURN_FRACTION)))
        for index in victims:
            servers[index].stop()
        survivors = [servers[i] for i in range(n) if i not in victims]
        churn_started = time.perf_counter()
        limiter = asyncio.Semaphore(CHURN_CONCURRENCY)

        async def churn_get(i: int) -> tuple[bool, float]:
            getter = rng.choice(survivors)
            async with limiter:
                got, elapsed, _ = await timed(getter.get(keys[i]), args.churn_op_timeout)
            return got == values[i], elapsed

        async def churn_put(i: int) -> tuple[bool, float]:
            publisher = survivors[i % len(survivors)]
            key = f"{publisher.node.id.hex()}/after-{i}"
            async with limiter:
                ok, elapsed, _ = await timed(
                    publisher.set(key, os.urandom(32)), args.churn_op_timeout
                )
            return ok is True, elapsed

        t0 = time.perf_counter()
        churn_get_samples = await asyncio.gather(*(churn_get(i) for i in range(args.ops)))
        churn_get_wall = time.perf_counter() - t0
        t0 = time.perf_counter()
        churn_put_samples = await asyncio.gather(*(churn_put(i) for i in range(args.churn_puts)))
        churn_put_wall = time.perf_counter() - t0
        churn_delay = time.perf_counter() - churn_started
    finally:
        for server in servers:
            server.stop()

    return {
        "implementation": "kademlia",
        "version": importlib.metadata.version("kademlia"),
        "nodes": n,
        "processes": 1,
        "transport": "UDP 127.0.0.1 (rpcudp, msgpack), no encryption",
        "store": "in-memory ForgetfulStorage",
        "join": {
            "p50_ms": round(percentile(joins, 50) * 1000, 3),
            "p95_ms": round(percentile(joins, 95) * 1000, 3),
            "max_ms": round(max(joins) * 1000, 3),
            "n": len(joins),
            "table_at_join_p50": percentile(tables, 50),
            "definition": "Server() + listen() + await bootstrap([node 0]) (ping, then an "
            "own-id NodeSpiderCrawl); nodes join one at a time",
        },
        "bootstrap_total_s": round(bootstrap_total, 3),
        "put": {
            **op_summary(put_samples),
            "definition": "await Server.set(key, 32 B): NodeSpiderCrawl + STORE on k=20; "
            "success = at least one STORE answered",
        },
        "get": {
            **op_summary(get_samples),
            "local_hits": len(get_samples) - len(network_samples),
            "network": op_summary(network_samples),
            "definition": "await Server.get(key) from a random other node; answered from the "
            "node's own storage without any network call when it holds a replica "
            "(local_hits of n; `network` = the others)",
        },
        "churn": {
            "killed": len(victims),
            "killed_fraction": round(len(victims) / n, 3),
            "how": "Server.stop() (UDP socket closed; RPCs to it time out after 5 s)",
            "get": {**op_summary(churn_get_samples), "wall_s": round(churn_get_wall, 3)},
            "put": {**op_summary(churn_put_samples), "wall_s": round(churn_put_wall, 3)},
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
        "routing_table_p50": percentile([table_size(s) for s in survivors], 50),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=50)
    parser.add_argument("--ops", type=int, default=200)
    parser.add_argument("--churn-puts", type=int, default=16)
    parser.add_argument("--churn-op-timeout", type=float, default=30.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--idle", type=float, default=5.0)
    parser.add_argument("--timeout", type=float, default=240.0, help="whole run (s)")
    args = parser.parse_args(argv)
    logging.basicConfig(stream=sys.stderr, level=logging.CRITICAL)

    def watchdog(signum: int, frame: Any) -> None:
        sys.stderr.write(f"kademlia_dht: watchdog fired after {args.timeout + 30:.0f}s\n")
        os._exit(3)

    signal.signal(signal.SIGALRM, watchdog)
    signal.alarm(int(args.timeout + 30))
    started = time.perf_counter()
    try:
        results = asyncio.run(asyncio.wait_for(run(args), args.timeout))
    except Exception as exc:
        sys.stderr.write(f"kademlia_dht: FAILED: {exc!r}\n")
        return 1
    finally:
        signal.alarm(0)
    results["total_seconds"] = round(time.perf_counter() - started, 2)
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
