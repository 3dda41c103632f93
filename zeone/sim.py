"""`zeone sim dht`: the real DHT code (routing tables, lookups, validation, stores) for thousands
of nodes in one process on Trio's virtual clock.

Nodes talk through `zeone.dht.simulation.SimRpc`, which calls the target's handlers directly after
the configured latency: no sockets and no Noise, so 10,000 nodes fit in one process; everything
above the RPC is the code a real node runs. Routing tables are filled the way a long-running
network converges (see `SimNetwork.seed_tables`). The run:

1. stores ``values`` records from random honest nodes;
2. measures lookups of random node ids (success = the closest honest node is among the k nodes
   the lookup returns), hops, virtual latency, and retrievals of the stored values;
3. makes a fraction of the nodes adversarial (returning nothing, garbage, or colluding) and/or
   fails a fraction at once (``churn``), then measures the same again.
"""

from __future__ import annotations

import random
import statistics
import time
import tracemalloc
from typing import Any

import attrs
import trio
import trio.testing

from zeone.dht.dht import DhtConfig
from zeone.dht.simulation import Behaviour, SimNetwork
from zeone.identity import NodeId

ADVERSARIAL_BEHAVIOURS = (Behaviour.EMPTY, Behaviour.GARBAGE, Behaviour.ECLIPSE)


@attrs.frozen
class SimSettings:
    nodes: int = 1000
    churn: float = 0.0
    adversarial: float = 0.0
    disjoint_paths: int = 1
    lookups: int = 200
    values: int = 200
    latency: float = 0.025
    rpc_timeout: float = 2.0
    seed: int = 0


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))]


async def _phase(net: SimNetwork, settings: SimSettings, keys: list[bytes], rng: random.Random):
    honest = net.honest()
    hops: list[float] = []
    latency: list[float] = []
    found = 0
    async with trio.open_nursery() as nursery:
        limiter = trio.CapacityLimiter(64)

        async def lookup() -> None:
            nonlocal found
            async with limiter:
                source = rng.choice(honest)
                target = NodeId(rng.randbytes(20))
                started = trio.current_time()
                result = await source.lookup_node(target)
                latency.append(trio.current_time() - started)
                hops.append(result.hops)
                # ground truth: the closest honest server other than the source
                truth = min(
                    (d for d in honest if d is not source),
                    key=lambda d: d.node_id.int ^ target.int,
                )
                # adversaries may rank themselves first; what matters is reaching the honest one
                if truth.node_id in {c.node_id for c in result.closest}:
                    found += 1

        for _ in range(settings.lookups):
            nursery.start_soon(lookup)
    retrieved = 0
    async with trio.open_nursery() as nursery:
        limiter = trio.CapacityLimiter(64)

        async def get(key: bytes) -> None:
            nonlocal retrieved
            async with limiter:
                if await rng.choice(honest).get(key):
                    retrieved += 1

        for key in keys:
            nursery.start_soon(get, key)
    return {
        "lookup_success": found / max(1, settings.lookups),
        "hops_p50": percentile(hops, 50),
        "hops_p95": percentile(hops, 95),
        "hops_p99": percentile(hops, 99),
        "latency_p50_ms": percentile(latency, 50) * 1000,
        "latency_p95_ms": percentile(latency, 95) * 1000,
        "latency_p99_ms": percentile(latency, 99) * 1000,
        "values_retrievable": retrieved / max(1, len(keys)),
    }


async def run_dht_simulation(settings: SimSettings) -> dict[str, Any]:
    rng = random.Random(settings.seed)
    config = DhtConfig(
        disjoint_paths=settings.disjoint_paths, rpc_timeout=settings.rpc_timeout, put_quorum=None
    )
    tracemalloc.start()
    built = time.perf_counter()
    net = SimNetwork(config=config, latency=settings.latency, seed=settings.seed)
    nodes = net.spawn_many(settings.nodes)
    net.seed_tables()
    memory = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    build_seconds = time.perf_counter() - built
    keys = []
    acks = []
    for index in range(settings.values):
        publisher = rng.choice(nodes)
        key = f"service:sim-{index}".encode()
        result = await publisher.provide(key, ttl=86400)
        acks.append(result.acks)
        keys.append(key)
    cpu = time.process_time()
    phases = {"healthy": await _phase(net, settings, keys, rng)}
    shuffled = nodes[:]
    rng.shuffle(shuffled)
    bad = int(settings.adversarial * len(nodes))
    for index, dht in enumerate(shuffled[:bad]):
        net.set_behaviour(dht, ADVERSARIAL_BEHAVIOURS[index % len(ADVERSARIAL_BEHAVIOURS)])
    failed = int(settings.churn * len(nodes))
    for dht in shuffled[bad : bad + failed]:
        net.set_behaviour(dht, Behaviour.DOWN)
    if bad or failed:
        phases["after"] = await _phase(net, settings, keys, rng)
    return {
        "settings": attrs.asdict(settings),
        "build_seconds": round(build_seconds, 2),
        "memory_per_node_kib": round(memory / settings.nodes / 1024, 1),
        "store_acks_mean": statistics.fmean(acks) if acks else 0,
        "cpu_seconds_lookups": round(time.process_time() - cpu, 2),
        "rpcs": net.calls,
        "phases": phases,
    }


def simulate(settings: SimSettings) -> dict[str, Any]:
    return trio.run(
        run_dht_simulation, settings, clock=trio.testing.MockClock(autojump_threshold=0)
    )
