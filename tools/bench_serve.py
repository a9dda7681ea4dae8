"""Serving throughput and latency of `ibllm serve` under 1, 8, 32 and 64 concurrent streaming clients.

    python tools/bench_serve.py                                   # the toy model, in a server started here
    python tools/bench_serve.py --parity /work/parity-fixtures    # the official-format parity files, too
    python tools/bench_serve.py --url http://gpu:8000/v1 --model-name 7B --api-key KEY   # a running server

Each level sends one streaming chat request per client, all at once, and waits for every answer. Per level:
aggregate completion tokens/s (all tokens / wall time), p50 and p99 time to first token, p50 and p99
inter-token latency (gaps between streamed text pieces), errors; each figure also as a ratio to the
single-client level of the same run (machines are noisy: compare within a run). Requests sample at a high
temperature without a seed, so answers run to --max-tokens (EOS is rare) and share a batch in the engine.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
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


def bench(name: str, url: str, args, image: bytes | None) -> list[dict]:
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    body = request_body(args, image)
    asyncio.run(run_level(url, headers, body, 2))  # warm-up: first-call costs are not serving costs
    rows = []
    for clients in args.levels:
        level = asyncio.run(run_level(url, headers, body, clients))
        rows.append(level.summary())
    base = rows[0]
    print(f"\n{name}: {args.max_tokens} tokens per answer, {'an image' if image else 'text only'} per request")
    print(f"{'clients':>7} {'tok/s':>8} {'x1':>6} {'TTFT p50':>9} {'p99':>7} {'x1':>6} {'ITL p50':>8} {'p99':>7} "
          f"{'x1':>6} {'errors':>6}")
    for row in rows:
        print(f"{row['clients']:>7} {row['tokens_per_s']:>8.1f} {row['tokens_per_s'] / base['tokens_per_s']:>6.2f} "
              f"{row['ttft_p50_s'] * 1e3:>7.0f}ms {row['ttft_p99_s'] * 1e3:>5.0f}ms "
              f"{row['ttft_p50_s'] / base['ttft_p50_s']:>6.2f} {row['itl_p50_s'] * 1e3:>6.1f}ms "
              f"{row['itl_p99_s'] * 1e3:>5.1f}ms {row['itl_p50_s'] / base['itl_p50_s']:>6.2f} {row['errors']:>6}")
    return rows


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
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args()
    args.levels = sorted(set(args.levels))
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
