"""Serving throughput and latency of `ibllm serve` under 1, 8, 32 and 64 concurrent streaming clients.

    python tools/bench_serve.py                                   # the toy model, in a server started here
    python tools/bench_serve.py --parity /work/parity-fixtures    # the official-format parity files, too
    python tools/bench_serve.py --url http://gpu:8000/v1 --model-name 7B --api-key KEY   # a running server

Each level sends one streaming chat request per client, all at once, and waits for every answer. Per level:
aggregate completion tokens/s (all tokens / wall time), p50 and p99 time to first token, p50 and p99
inter-token latency (gaps between streamed text pieces), errors; each figure also as a ratio to the
single-client level of the same round. The levels run in --rounds interleaved rounds (1, 8, 32, 64, 1, 8, ...)
and the table gives each ratio's median and best over the rounds (machines are noisy: compare within a
round). Requests sample at a high temperature without a seed, so answers run to --max-tokens (EOS is rare)
and share a batch in the engine.

    python tools/bench_serve.py --parity DIR --levels 1 32 --soak 600    # + a 10-minute soak at 8 clients

--soak S keeps --soak-clients clients busy for S seconds (each sends its next request when its answer
ends) and samples the server's resident memory (`process_resident_memory_bytes` on /metrics) every 10 s:
after the first minute (warm-up: allocator pools, first-call caches) RSS should stay flat.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import re
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ibllm_agent.serve.process import ServerProcess  # noqa: E402

LEVELS = (1, 8, 32, 64)


@dataclass
class Level:
    clients: int
    wall_s: float = 0.0
    tokens: int = 0
    errors: int = 0
    ttft_s: list[float] = field(default_factory=list)
    itl_s: list[float] = field(default_factory=list)

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.wall_s if self.wall_s else 0.0

    def summary(self) -> dict:
        return {"clients": self.clients, "tokens_per_s": self.tokens_per_s, "tokens": self.tokens,
                "errors": self.errors, "wall_s": self.wall_s, "ttft_p50_s": percentile(self.ttft_s, 50),
                "ttft_p99_s": percentile(self.ttft_s, 99), "itl_p50_s": percentile(self.itl_s, 50),
                "itl_p99_s": percentile(self.itl_s, 99)}


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def request_body(args, image: bytes | None) -> dict:
    content: list[dict] = [{"type": "text", "text": "Describe what you perceive in detail."}]
    if image is not None:
        content.append({"type": "image_url",
                        "image_url": {"url": "data:image/png;base64," + base64.b64encode(image).decode()}})
    return {"model": args.model_name, "messages": [{"role": "user", "content": content}], "stream": True,
            "stream_options": {"include_usage": True}, "max_tokens": args.max_tokens,
            "temperature": args.temperature, "top_p": 1.0}


async def one_client(http: httpx.AsyncClient, url: str, body: dict, level: Level) -> None:
    started, last = time.perf_counter(), None
    try:
        async with http.stream("POST", url + "/chat/completions", json=body) as response:
            if response.status_code != 200:
                await response.aread()
                raise RuntimeError(f"HTTP {response.status_code}: {response.text[:200]}")
            async for line in response.aiter_lines():
                if not line.startswith("data: {"):
                    continue
                event = json.loads(line[6:])
                if "error" in event:
                    raise RuntimeError(event["error"]["message"])
                if event.get("usage"):
                    level.tokens += event["usage"]["completion_tokens"]
                if any(c["delta"].get("content") for c in event["choices"]):
                    now = time.perf_counter()
                    (level.ttft_s if last is None else level.itl_s).append(now - (last or started))
                    last = now
    except Exception as exc:  # noqa: BLE001 - counted: a benchmark reports errors, it does not stop at one
        level.errors += 1
        print(f"  error: {exc}", file=sys.stderr)


async def run_level(url: str, headers: dict, body: dict, clients: int) -> Level:
    level = Level(clients)
    limits = httpx.Limits(max_connections=clients + 4, max_keepalive_connections=clients + 4)
    async with httpx.AsyncClient(headers=headers, timeout=httpx.Timeout(None, connect=30), limits=limits) as http:
        started = time.perf_counter()
        await asyncio.gather(*(one_client(http, url, body, level) for _ in range(clients)))
        level.wall_s = time.perf_counter() - started
    return level


def bench(name: str, url: str, args, image: bytes | None) -> dict:
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    body = request_body(args, image)
    asyncio.run(run_level(url, headers, body, 2))  # warm-up: first-call costs are not serving costs
    rounds = []
    for _ in range(args.rounds):
        rounds.append([asyncio.run(run_level(url, headers, body, clients)).summary() for clients in args.levels])
    print(f"\n{name}: {args.max_tokens} tokens per answer, {'an image' if image else 'text only'} per request, "
          f"{args.rounds} interleaved rounds; ratios to one client of the same round, median (best)")
    print(f"{'clients':>7} {'tok/s':>8} {'x1 tok/s':>13} {'TTFT p50':>9} {'p99':>7} {'x1':>6} {'ITL p50':>8} "
          f"{'p99':>7} {'x1':>6} {'errors':>6}")
    table = []
    for i, clients in enumerate(args.levels):
        rows = [r[i] for r in rounds]
        speedups = [r[i]["tokens_per_s"] / r[0]["tokens_per_s"] for r in rounds]
        row = {"clients": clients, "errors": sum(r["errors"] for r in rows),
               "speedup_median": statistics.median(speedups), "speedup_best": max(speedups)}
        for key in ("tokens_per_s", "ttft_p50_s", "ttft_p99_s", "itl_p50_s", "itl_p99_s"):
            row[key] = statistics.median(r[key] for r in rows)
        row["ttft_ratio"] = statistics.median(r[i]["ttft_p50_s"] / r[0]["ttft_p50_s"] for r in rounds)
        row["itl_ratio"] = statistics.median(r[i]["itl_p50_s"] / r[0]["itl_p50_s"] for r in rounds)
        table.append(row)
        print(f"{clients:>7} {row['tokens_per_s']:>8.1f} {row['speedup_median']:>6.2f} ({row['speedup_best']:>4.2f}) "
              f"{row['ttft_p50_s'] * 1e3:>7.0f}ms {row['ttft_p99_s'] * 1e3:>5.0f}ms {row['ttft_ratio']:>6.2f} "
              f"{row['itl_p50_s'] * 1e3:>6.1f}ms {row['itl_p99_s'] * 1e3:>5.1f}ms {row['itl_ratio']:>6.2f} "
              f"{row['errors']:>6}")
    result = {"levels": table, "rounds": rounds}
    if args.soak:
        result["soak"] = asyncio.run(soak(url, headers, body, args.soak_clients, args.soak))
    return result


def server_rss(http_base: str) -> float:
    text = httpx.get(http_base + "/metrics", timeout=30).text
    found = re.search(r"^process_resident_memory_bytes ([0-9.e+]+)$", text, re.M)
    if found is None:
        raise RuntimeError("the server's /metrics has no process_resident_memory_bytes (not Linux?)")
    return float(found.group(1))


async def soak(url: str, headers: dict, body: dict, clients: int, seconds: float, warmup_s: float = 60.0) -> dict:
    """`clients` clients in closed loops for `seconds`; server RSS every 10 s, judged after `warmup_s`."""
    base = url.rsplit("/v1", 1)[0]
    level = Level(clients)
    deadline = time.perf_counter() + seconds
    requests = 0

    async def client(http):
        nonlocal requests
        while time.perf_counter() < deadline:
            await one_client(http, url, body, level)
            requests += 1

    samples = []

    async def sampler():
        started = time.perf_counter()
        while time.perf_counter() < deadline:
            samples.append((time.perf_counter() - started, await asyncio.to_thread(server_rss, base)))
            await asyncio.sleep(10)

    limits = httpx.Limits(max_connections=clients + 4, max_keepalive_connections=clients + 4)
    async with httpx.AsyncClient(headers=headers, timeout=httpx.Timeout(None, connect=30), limits=limits) as http:
        started = time.perf_counter()
        await asyncio.gather(sampler(), *(client(http) for _ in range(clients)))
        level.wall_s = time.perf_counter() - started
    samples.append((level.wall_s, server_rss(base)))
    judged = [rss for t, rss in samples if t >= warmup_s] or [samples[-1][1]]
    first, low, high = judged[0], min(judged), max(judged)
    out = {"clients": clients, "seconds": level.wall_s, "requests": requests, "errors": level.errors,
           "tokens_per_s": level.tokens_per_s, "rss_first_mb": first / 2**20, "rss_last_mb": judged[-1] / 2**20,
           "rss_min_mb": low / 2**20, "rss_max_mb": high / 2**20, "rss_spread": (high - low) / first,
           "rss_at_start_mb": samples[0][1] / 2**20, "samples": [(round(t), rss / 2**20) for t, rss in samples]}
    print(f"\nsoak: {clients} clients for {level.wall_s:.0f} s: {requests} requests, {level.errors} errors, "
          f"{level.tokens_per_s:.1f} tok/s; RSS after {warmup_s:.0f} s warm-up {out['rss_first_mb']:.0f} MB -> "
          f"{out['rss_last_mb']:.0f} MB (min {out['rss_min_mb']:.0f}, max {out['rss_max_mb']:.0f}: spread "
          f"{out['rss_spread']:.1%} of the first; at start {out['rss_at_start_mb']:.0f} MB)")
    return out


def toy_image() -> bytes:
    from ibllm_agent.toy import ToyWorld

    with tempfile.TemporaryDirectory() as folder:
        return Path(ToyWorld(0).write("dog", "image", 0, Path(folder)).path).read_bytes()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", help="a running server's /v1 URL (default: start servers here)")
    parser.add_argument("--model-name", default="toy", help="with --url: the model id the server serves")
    parser.add_argument("--api-key", help="with --url: its key")
    parser.add_argument("--parity", type=Path, help="also bench the parity model built in this folder "
                                                    "(python ../shared/parity/build_fixtures.py --out DIR)")
    parser.add_argument("--no-toy", action="store_true", help="skip the toy model")
    parser.add_argument("--levels", type=int, nargs="+", default=list(LEVELS), help="concurrent clients per level")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--temperature", type=float, default=50.0, help="high: answers run to --max-tokens")
    parser.add_argument("--text-only", action="store_true", help="no image in the requests")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds of all levels")
    parser.add_argument("--soak", type=float, default=0.0, help="then a soak of this many seconds")
    parser.add_argument("--soak-clients", type=int, default=8)
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args()
    args.levels = sorted(set(args.levels) | {1})  # every ratio is to one client
    image = None if args.text_only else toy_image()
    results = {}
    if args.url:
        results[args.model_name] = bench(args.model_name, args.url, args, image)
    else:
        servers = [] if args.no_toy else [("toy", ["--model", "toy"])]
        if args.parity:
            servers.append(("parity", ["--model", str(args.parity / "adapter.pth"), "--llama-dir",
                                       str(args.parity / "llama"), "--imagebind", str(args.parity / "imagebind.pth")]))
        for name, model_args in servers:
            flags = [*model_args, "--device", args.device, "--max-batch", str(max(args.levels)), "--max-queue", "1024"]
            with ServerProcess(flags, ready_timeout_s=600) as server:
                args.model_name = server_model_name(server)
                results[name] = bench(name, server.url, args, image)
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "results": results},
                                        indent=1))
    return 0


def server_model_name(server: ServerProcess) -> str:
    return httpx.get(server.url + "/models").json()["data"][0]["id"]


if __name__ == "__main__":
    sys.exit(main())
