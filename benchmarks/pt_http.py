"""HTTP/WebSocket transport benchmark: ws (and nginx in front) vs plain TCP + Noise, one run.

    python3 -m uv run python benchmarks/pt_http.py [--quick] [--no-nginx]

Measured on loopback, side by side so the ratios compare like with like:

- handshake: sequential dial latency p50/p99 of TCP connect + Noise XX, against TCP connect +
  WebSocket upgrade (browser-like request, h11 + wsproto) + the same Noise XX;
- throughput: one Noise channel, 64 KiB writes, over plain TCP and over ws (target: ws >= 50% of
  plain), and through Debian's nginx running examples/nginx/zeone.conf when nginx is installed;
- the WebSocket layer alone (no Noise) vs raw TCP, to show where the cost sits;
- client-frame masking: wsproto's per-message XOR (bytes.translate on four strided slices) vs
  a whole-block int.from_bytes XOR, MB/s for the message sizes the channel writes.

Writes results/pt_http.json and results/pt_http.md (pt_http-quick.* with --quick).
"""

from __future__ import annotations

import argparse
import functools
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import markdown_table, summary_ms, write_results
from zeone_http import masking as masking_mod
from zeone_http.transport import HttpSettings, WsTransport

from zeone.identity import Identity
from zeone.net.noise import Hello, secure_accept, secure_dial
from zeone.net.transport import Address

CHUNK = 64 * 1024
SECRET = "/assets/app-7c1e0b55.js"
EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "nginx" / "zeone.conf"


# -- endpoints ------------------------------------------------------------------------------------


async def start_plain(nursery: trio.Nursery, handler) -> Address:
    listeners = await nursery.start(trio.serve_tcp, handler, 0)
    return Address.build("tcp", "127.0.0.1", listeners[0].socket.getsockname()[1])


async def start_ws(nursery: trio.Nursery, handler, port: int = 0) -> Address:
    transport = WsTransport(HttpSettings(secret_path=lambda: SECRET))
    return await nursery.start(transport.listen, Address.build("ws", "127.0.0.1", port), handler)


async def dial(address: Address) -> trio.abc.Stream:
    if address.scheme == "tcp":
        return await trio.open_tcp_stream(address.host, address.port)
    return await WsTransport(HttpSettings(secret_path=lambda: SECRET)).dial(address)


# -- measurements ---------------------------------------------------------------------------------


async def handshakes(start, n: int, address_of=None) -> list[float]:
    server_id, client_id = Identity.generate(), Identity.generate()

    async def accept(stream: trio.abc.Stream) -> None:
        channel = await secure_accept(stream, server_id, Hello())
        await channel.aclose()

    samples = []
    async with trio.open_nursery() as nursery:
        address = await start(nursery, accept)
        if address_of is not None:
            address = address_of(address)
        for _ in range(n):
            started = time.perf_counter()
            stream = await dial(address)
            channel = await secure_dial(stream, client_id, Hello(), server_id.node_id)
            samples.append(time.perf_counter() - started)
            await channel.aclose()
        nursery.cancel_scope.cancel()
    return samples


async def throughput(start, total: int, *, noise: bool = True, address_of=None) -> float:
    server_id, client_id = Identity.generate(), Identity.generate()
    done = trio.Event()
    received = 0

    async def sink(stream: trio.abc.Stream) -> None:
        nonlocal received
        source = await secure_accept(stream, server_id, Hello()) if noise else stream
        while received < total:
            data = await source.receive_some() if noise else await source.receive_some(262144)
            if not data:
                break
            received += len(data)
        done.set()

    async with trio.open_nursery() as nursery:
        address = await start(nursery, sink)
        if address_of is not None:
            address = address_of(address)
        stream = await dial(address)
        out = await secure_dial(stream, client_id, Hello(), server_id.node_id) if noise else stream
        payload = os.urandom(CHUNK)
        started = time.perf_counter()
        for _ in range(total // CHUNK):
            await out.send_all(payload)
        await done.wait()
        elapsed = time.perf_counter() - started
        await out.aclose()
        nursery.cancel_scope.cancel()
    return total / elapsed / 1e6


def masking(size: int, rounds: int) -> dict[str, float]:
    data = os.urandom(size)
    key = os.urandom(4)

    def rate(fn) -> float:
        started = time.perf_counter()
        for _ in range(rounds):
            fn()
        return round(size * rounds / (time.perf_counter() - started) / 1e6)

    def int_xor() -> bytes:
        mask = (key * (size // 4 + 1))[:size]
        value = int.from_bytes(data, "little") ^ int.from_bytes(mask, "little")
        return value.to_bytes(size, "little")

    return {
        "wsproto_mb_s": rate(lambda: masking_mod.WSPROTO_MASKER(key).process(data)),
        "translate_fallback_mb_s": rate(lambda: masking_mod._apply_mask_python(data, key)),
        "int_xor_mb_s": rate(int_xor),
        "ours_mb_s": rate(lambda: masking_mod.apply_mask(data, key)),
    }


# -- nginx in front -------------------------------------------------------------------------------


class NginxFront:
    """Debian's nginx running the example config, proxying to a backend port on loopback."""

    def __init__(self, backend: int) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="zeone-bench-nginx-"))
        self.port = _free_port()
        block = EXAMPLE.read_text().partition("# Optional: send plain-HTTP")[0]
        block = (
            block.replace("    listen 443 ssl;\n", f"    listen 127.0.0.1:{self.port};\n")
            .replace("    listen [::]:443 ssl;\n", "")
            .replace("127.0.0.1:8080", f"127.0.0.1:{backend}")
            .replace("/var/www/example.org", str(self.dir))
        )
        block = "\n".join(line for line in block.splitlines() if "ssl_" not in line)
        (self.dir / "zeone.conf").write_text(block)
        d = self.dir
        (d / "nginx.conf").write_text(
            f"daemon off; master_process off; worker_processes 1; pid {d}/nginx.pid;\n"
            f"events {{ worker_connections 64; }}\n"
            f"http {{ access_log off; client_body_temp_path {d}/b; proxy_temp_path {d}/p;\n"
            f"fastcgi_temp_path {d}/f; uwsgi_temp_path {d}/u; scgi_temp_path {d}/s;\n"
            f"include {d}/zeone.conf; }}\n"
        )
        self.process = subprocess.Popen(
            ["nginx", "-p", str(d), "-c", str(d / "nginx.conf"), "-e", str(d / "error.log")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for _ in range(200):
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("nginx did not start")

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)
        shutil.rmtree(self.dir, ignore_errors=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def through_nginx(total: int, n: int) -> dict[str, Any]:
    backend = _free_port()
    front = NginxFront(backend)
    try:
        backend_ws = functools.partial(start_ws, port=backend)  # the port nginx proxies to

        def via(_backend: Address) -> Address:
            return Address.build("ws", "127.0.0.1", front.port, SECRET)

        hs = await handshakes(backend_ws, n, address_of=via)
        tp = await throughput(backend_ws, total, address_of=via)
        return {"handshake": summary_ms(hs), "throughput_mb_s": round(tp, 1)}
    finally:
        front.stop()


# -- main -----------------------------------------------------------------------------------------


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    total = args.mib * 1024 * 1024
    results: dict[str, Any] = {"settings": vars(args).copy()}
    tcp_hs = await handshakes(start_plain, args.handshakes)
    ws_hs = await handshakes(start_ws, args.handshakes)
    results["handshake"] = {"tcp_noise": summary_ms(tcp_hs), "ws_noise": summary_ms(ws_hs)}
    runs: dict[str, list[float]] = {"tcp_noise": [], "ws_noise": [], "tcp_raw": [], "ws_raw": []}
    for _ in range(args.repeat):  # interleaved, best of N: the machine is shared
        runs["tcp_noise"].append(await throughput(start_plain, total))
        runs["ws_noise"].append(await throughput(start_ws, total))
        runs["tcp_raw"].append(await throughput(start_plain, total, noise=False))
        runs["ws_raw"].append(await throughput(start_ws, total, noise=False))
    results["throughput_mb_s"] = {k: round(max(v), 1) for k, v in runs.items()}
    results["throughput_runs_mb_s"] = {k: [round(x, 1) for x in v] for k, v in runs.items()}
    results["masking"] = {
        f"{size // 1024}KiB": masking(size, max(20, args.mib * 4 * 1024 // size))
        for size in (4 * 1024, 64 * 1024, 256 * 1024)
    }
    if args.nginx and shutil.which("nginx"):
        results["nginx"] = await through_nginx(total, args.handshakes)
    return results


def report(results: dict[str, Any]) -> str:
    hs, tp = results["handshake"], results["throughput_mb_s"]
    rows = [
        [
            "handshake p50 / p99 (ms)",
            f"{hs['tcp_noise']['p50_ms']} / {hs['tcp_noise']['p99_ms']}",
            f"{hs['ws_noise']['p50_ms']} / {hs['ws_noise']['p99_ms']}",
            f"+{hs['ws_noise']['p50_ms'] - hs['tcp_noise']['p50_ms']:.2f} ms p50 (one extra "
            "round trip for the upgrade)",
        ],
        [
            "throughput, Noise channel (MB/s)",
            tp["tcp_noise"],
            tp["ws_noise"],
            f"{tp['ws_noise'] / tp['tcp_noise']:.0%} of plain (target >= 50%)",
        ],
        [
            "throughput, no Noise (MB/s)",
            tp["tcp_raw"],
            tp["ws_raw"],
            f"{tp['ws_raw'] / tp['tcp_raw']:.0%} of raw TCP (WebSocket layer alone)",
        ],
    ]
    if "nginx" in results:
        ng = results["nginx"]
        rows.append(
            [
                "via nginx: handshake p50 / p99 (ms)",
                f"{hs['tcp_noise']['p50_ms']} / {hs['tcp_noise']['p99_ms']}",
                f"{ng['handshake']['p50_ms']} / {ng['handshake']['p99_ms']}",
                "ws through examples/nginx/zeone.conf",
            ]
        )
        rows.append(
            [
                "via nginx: throughput, Noise channel (MB/s)",
                tp["tcp_noise"],
                ng["throughput_mb_s"],
                f"{ng['throughput_mb_s'] / tp['tcp_noise']:.0%} of plain",
            ]
        )
    table = markdown_table(["metric", "plain TCP + Noise", "ws + Noise", "ratio"], rows)
    mask_rows = [
        [
            size,
            m["wsproto_mb_s"],
            m["translate_fallback_mb_s"],
            m["int_xor_mb_s"],
            m["ours_mb_s"],
        ]
        for size, m in results["masking"].items()
    ]
    table += "\n\nClient-frame masking (MB/s):\n\n" + markdown_table(
        [
            "message",
            "wsproto XorMaskerSimple",
            "translate fallback (ours, no C)",
            "int.from_bytes XOR",
            "websockets.speedups.apply_mask (used)",
        ],
        mask_rows,
    )
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small numbers for a smoke run")
    parser.add_argument("--mib", type=int, default=256)
    parser.add_argument("--handshakes", type=int, default=300)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--no-nginx", dest="nginx", action="store_false")
    args = parser.parse_args()
    if args.quick:
        args.mib, args.handshakes, args.repeat = 32, 50, 1
    results = trio.run(measure, args)
    table = report(results)
    path = write_results("pt_http-quick" if args.quick else "pt_http", results, table)
    print(table)
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
