"""CDN gateway benchmark: cached-file throughput vs nginx, time to first byte, fetch from a peer.

    python3 -m uv run python benchmarks/cdn.py [--quick] [--mib N] [--rounds R]

Real node processes started through the CLI (`zeone init` / `zeone run`), loopback only:

- gateway: node A publishes a random file of `--mib` MiB (1024; --quick: 128) with
  `zeone cdn publish`; curl downloads `GET /cdn/<id>` to /dev/null `--rounds` times; MB/s and time
  to first byte (curl's `time_starttransfer`), best and median.
- nginx: Debian's nginx (`/usr/sbin/nginx`, a temporary config on a free port, sendfile on, one
  worker) serves the same bytes from disk in the same run, downloaded by the same curl command.
  The target is gateway >= 30% of nginx.
- peer: node B (bootstrapped from A) gets its first request for the content through its own
  gateway: it finds A in the DHT, fetches and verifies every chunk (8 in parallel) and caches
  them while streaming; then a second request served from B's cache.

Writes results/cdn.json and results/cdn.md (or cdn-quick.*).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import markdown_table, write_results

NGINX = "/usr/sbin/nginx"
CURL_FORMAT = "%{http_code} %{size_download} %{time_starttransfer} %{time_total}"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def curl(url: str, headers: list[str] = ()) -> dict[str, float]:
    command = ["curl", "-s", "-o", "/dev/null", "-w", CURL_FORMAT, url]
    for header in headers:
        command[1:1] = ["-H", header]
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout.split()
    code, size, first, total = int(out[0]), int(out[1]), float(out[2]), float(out[3])
    if code != 200:
        raise RuntimeError(f"{url}: HTTP {code}")
    return {"bytes": size, "ttfb_s": first, "total_s": total, "mb_s": size / total / 1e6}


def raw_get(url: str, headers: list[str] = ()) -> dict[str, float]:
    """A minimal HTTP/1.1 GET over a socket reading into a 4 MiB buffer: a client that is not
    itself the bottleneck (curl reads 16-64 KiB at a time and saturates one core first)."""
    rest = url.removeprefix("http://")
    hostport, _, path = rest.partition("/")
    host, _, port = hostport.rpartition(":")
    lines = [f"GET /{path} HTTP/1.1", f"Host: {hostport}", *headers, "Connection: close"]
    started = time.perf_counter()
    with socket.create_connection((host, int(port))) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        buffer = bytearray(4 * 1024 * 1024)
        view = memoryview(buffer)
        head = b""
        while b"\r\n\r\n" not in head:
            got = sock.recv(65536)
            if not got:
                raise RuntimeError("connection closed in the headers")
            head += got
        first = time.perf_counter() - started
        header, _, body = head.partition(b"\r\n\r\n")
        status = int(header.split()[1])
        length = int(
            next(
                line.split(b":", 1)[1]
                for line in header.split(b"\r\n")
                if line.lower().startswith(b"content-length:")
            )
        )
        received = len(body)
        while received < length:
            n = sock.recv_into(view)
            if not n:
                raise RuntimeError(f"short body: {received} of {length}")
            received += n
    total = time.perf_counter() - started
    if status != 200:
        raise RuntimeError(f"{url}: HTTP {status}")
    return {"bytes": received, "ttfb_s": first, "total_s": total, "mb_s": received / total / 1e6}


def rounds(url: str, n: int, headers: list[str] = (), client: Any = None) -> dict[str, Any]:
    runs = [(client or curl)(url, headers) for _ in range(n)]
    speeds = [r["mb_s"] for r in runs]
    ttfb = [r["ttfb_s"] * 1000 for r in runs]
    return {
        "best_mb_s": round(max(speeds), 1),
        "median_mb_s": round(statistics.median(speeds), 1),
        "ttfb_median_ms": round(statistics.median(ttfb), 2),
        "ttfb_best_ms": round(min(ttfb), 2),
        "runs": runs,
    }


class Node:
    def __init__(self, directory: Path, env: dict[str, str]) -> None:
        self.directory = directory
        self.env = env
        self.config = str(directory / "zeone.toml")
        self.process: subprocess.Popen[bytes] | None = None
        subprocess.run(
            [sys.executable, "-m", "zeone", "--enable", "cdn", "init", "--dir", str(directory),
             "--listen", "tcp://127.0.0.1:0", "--api-bind", "127.0.0.1:0"],
            env=env, check=True, capture_output=True,
        )  # fmt: skip

    def cli(self, *args: str) -> str:
        return subprocess.run(
            [sys.executable, "-m", "zeone", "--config", self.config, *args],
            env=self.env, check=True, capture_output=True, text=True,
        ).stdout  # fmt: skip

    def start(self, *flags: str) -> dict[str, Any]:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "zeone", "--config", self.config, "run", *flags],
            env=self.env, stdout=subprocess.DEVNULL,
            stderr=(self.directory / "stderr.log").open("w"),
        )  # fmt: skip
        runtime = self.directory / "node.json"
        deadline = time.monotonic() + 60
        while not runtime.exists():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError((self.directory / "stderr.log").read_text())
            time.sleep(0.05)
        return json.loads(runtime.read_text())

    @property
    def auth(self) -> str:
        return f"Authorization: Bearer {(self.directory / 'api.token').read_text().strip()}"

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()


def start_nginx(root: Path, work: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    conf = work / "nginx.conf"
    conf.write_text(
        ("user root;\n" if os.geteuid() == 0 else "")  # workers must read the temp dir
        + f"""
worker_processes 1;
daemon off;
pid {work}/nginx.pid;
error_log {work}/error.log;
events {{ worker_connections 64; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    client_body_temp_path {work}/body;
    proxy_temp_path {work}/proxy;
    fastcgi_temp_path {work}/fastcgi;
    uwsgi_temp_path {work}/uwsgi;
    scgi_temp_path {work}/scgi;
    server {{
        listen 127.0.0.1:{port};
        root {root};
    }}
}}
"""
    )
    process = subprocess.Popen([NGINX, "-c", str(conf), "-p", str(work)], stderr=subprocess.PIPE)
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return process, port
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"nginx did not start: {process.stderr.read()!r}") from None
            time.sleep(0.05)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="128 MiB instead of 1 GiB")
    parser.add_argument("--mib", type=int, default=None)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--read-block", type=int, help="[plugins.cdn] read_block for the nodes")
    args = parser.parse_args()
    mib = args.mib or (128 if args.quick else 1024)
    if not os.path.exists(NGINX) or not shutil.which("curl"):
        sys.exit("needs /usr/sbin/nginx (apt-get install nginx) and curl")
    env = {k: v for k, v in os.environ.items() if not k.startswith("ZEONE_")}
    if args.read_block:
        env["ZEONE_PLUGINS__CDN__READ_BLOCK"] = str(args.read_block)
    with tempfile.TemporaryDirectory(prefix="zeone-cdn-bench-") as tmp:
        work = Path(tmp)
        env["HOME"] = str(work / "home")
        www = work / "www"
        www.mkdir()
        data = www / "file.bin"
        with data.open("wb") as handle:
            for _ in range(mib):
                handle.write(os.urandom(1024 * 1024))
        size = data.stat().st_size

        a, b = Node(work / "a", env), Node(work / "b", env)
        nginx = None
        try:
            info_a = a.start()
            started = time.perf_counter()
            out = a.cli("cdn", "publish", str(data)).split()
            publish_s = time.perf_counter() - started
            cid, url_a = out[0], out[1]
            print(f"published {mib} MiB as {cid} in {publish_s:.1f} s", file=sys.stderr)

            gateway = rounds(url_a, args.rounds, [a.auth])
            gateway_raw = rounds(url_a, args.rounds, [a.auth], raw_get)
            print(
                f"gateway: {gateway['best_mb_s']} / {gateway_raw['best_mb_s']} MB/s",
                file=sys.stderr,
            )
            nginx, port = start_nginx(www, work)
            nginx_url = f"http://127.0.0.1:{port}/file.bin"
            reference = rounds(nginx_url, args.rounds)
            reference_raw = rounds(nginx_url, args.rounds, client=raw_get)
            print(
                f"nginx: {reference['best_mb_s']} / {reference_raw['best_mb_s']} MB/s",
                file=sys.stderr,
            )

            seed = f"{info_a['node_id']}@{info_a['listen'][0]}"
            info_b = b.start("--bootstrap", seed)
            url_b = f"{info_b['api_url']}/cdn/{cid}"
            time.sleep(1.0)  # let B's bootstrap lookup finish
            first = curl(url_b, [b.auth])
            print(f"peer fetch: {first['mb_s']:.1f} MB/s", file=sys.stderr)
            cached = rounds(url_b, max(1, args.rounds // 2), [b.auth])
        finally:
            if nginx is not None:
                nginx.terminate()
                nginx.wait()
            b.stop()
            a.stop()

    ratio = gateway["best_mb_s"] / reference["best_mb_s"]
    ratio_raw = gateway_raw["best_mb_s"] / reference_raw["best_mb_s"]
    results = {
        "size_bytes": size,
        "rounds": args.rounds,
        "publish_s": round(publish_s, 2),
        "gateway_cached": gateway,
        "nginx": reference,
        "gateway_vs_nginx": round(ratio, 3),
        "gateway_raw_client": gateway_raw,
        "nginx_raw_client": reference_raw,
        "gateway_vs_nginx_raw_client": round(ratio_raw, 3),
        "target": ">= 0.30 of nginx",
        "peer_first_request": {
            "mb_s": round(first["mb_s"], 1),
            "ttfb_ms": round(first["ttfb_s"] * 1000, 2),
        },
        "peer_cached": cached,
    }
    rows = [
        ["gateway, cached on the node (A), curl", gateway["best_mb_s"], gateway["median_mb_s"],
         gateway["ttfb_median_ms"], f"{ratio:.0%} of nginx"],
        ["nginx 1 worker, sendfile, same file, curl", reference["best_mb_s"],
         reference["median_mb_s"], reference["ttfb_median_ms"], "reference"],
        ["gateway, cached on the node (A), 4 MiB-buffer socket client", gateway_raw["best_mb_s"],
         gateway_raw["median_mb_s"], gateway_raw["ttfb_median_ms"], f"{ratio_raw:.0%} of nginx"],
        ["nginx, same file, 4 MiB-buffer socket client", reference_raw["best_mb_s"],
         reference_raw["median_mb_s"], reference_raw["ttfb_median_ms"], "reference"],
        ["gateway B, first request (fetch from A, verify, cache)", round(first["mb_s"], 1), "",
         round(first["ttfb_s"] * 1000, 2), ""],
        ["gateway B, second request (B's cache)", cached["best_mb_s"], cached["median_mb_s"],
         cached["ttfb_median_ms"], ""],
        ["`zeone cdn publish` (import, hash, sign)", round(size / publish_s / 1e6, 1), "", "", ""],
    ]  # fmt: skip
    table = (
        f"CDN gateway, {mib} MiB file, curl to /dev/null over loopback, {args.rounds} rounds\n\n"
        + markdown_table(["what", "best MB/s", "median MB/s", "TTFB ms (median)", "note"], rows)
    )
    path = write_results("cdn-quick" if args.quick else "cdn", results, table)
    print(table)
    print(f"\nwritten {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
