"""Serving under load: `graft serve` with continuous batching against the same server decoding one
request at a time, on the same requests, in the same run.

Method. A random-init model of the chosen preset with graft's bytes tokenizer is saved as a
checkpoint in a temporary directory (nothing is downloaded; the text is noise, the arithmetic is
real). For each arm a fresh `graft serve` subprocess listens on a free loopback port:

    batched:    --max-batch B (default 16)
    sequential: --max-batch 1   (the reference: requests queue and are decoded one by one)

both with a queue long enough for every client. After two warm-up requests, C concurrent clients
(asyncio + httpx, default 32) send N requests in all (default 256) to /v1/completions with
stream: true, each a distinct prompt of about P tokens asking for M new tokens with its own seed
(temperature 0.8), so both arms do exactly the same work: the engine gives a request the same
tokens whatever else is in its batch, and the script checks that both arms generated the same
number of tokens. Per request it records the time to the first streamed text (TTFT) and to the
end (latency); the usage chunk gives the token counts. Any non-200, engine error or malformed
stream counts as an error; the run must have none. Reported: requests/s and generated tokens/s
over the wall time of the whole load, p50/p95 latency and TTFT, and the ratio of throughputs.

The default run takes one to three minutes on two CPU cores (the sequential arm is the long
one); --requests, --max-tokens and --preset scale it. The server runs with OMP_NUM_THREADS set by
--threads (default: all cores), the clients in this process.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

SERVING_LINE = re.compile(r"on http://127\.0\.0\.1:(\d+)/")
WORDS = (
    "the model reads a token and writes the next one while the batch keeps every slot busy and the "
    "queue waits for room in the cache"
).split()


@dataclass
class Sample:
    ok: bool
    latency: float = 0.0
    ttft: float | None = None
    completion_tokens: int = 0
    error: str = ""


@dataclass
class ArmResult:
    name: str
    max_batch: int
    wall_s: float
    samples: list[Sample] = field(default_factory=list)

    @property
    def errors(self) -> list[Sample]:
        return [s for s in self.samples if not s.ok]

    @property
    def tokens(self) -> int:
        return sum(s.completion_tokens for s in self.samples)

    def percentile(self, values: list[float], q: float) -> float:
        ordered = sorted(values)
        return (
            ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]
            if ordered
            else float("nan")
        )

    def row(self) -> dict[str, float | int | str]:
        ok = [s for s in self.samples if s.ok]
        latencies = [s.latency for s in ok]
        ttfts = [s.ttft for s in ok if s.ttft is not None]
        return {
            "arm": self.name,
            "max_batch": self.max_batch,
            "requests": len(self.samples),
            "errors": len(self.errors),
            "wall_s": self.wall_s,
            "req_s": len(ok) / self.wall_s,
            "tok_s": self.tokens / self.wall_s,
            "tokens": self.tokens,
            "p50_latency_s": self.percentile(latencies, 50),
            "p95_latency_s": self.percentile(latencies, 95),
            "p50_ttft_s": self.percentile(ttfts, 50),
            "p95_ttft_s": self.percentile(ttfts, 95),
        }


def make_checkpoint(directory: Path, preset_name: str, seed: int) -> Path:
    import torch

    from graft.checkpoint import save_checkpoint
    from graft.data.tokenizer import bytes_tokenizer
    from graft.model.config import preset
    from graft.model.transformer import LanguageModel

    tokenizer = bytes_tokenizer()
    torch.manual_seed(seed)
    model = LanguageModel(preset(preset_name, vocab_size=tokenizer.vocab_size)).eval()
    return save_checkpoint(
        directory / preset_name, model=model, tokenizer=tokenizer, run_config_yaml="{}\n"
    )


def start_server(
    checkpoint: Path, max_batch: int, max_queue: int, threads: int
) -> tuple[subprocess.Popen, str]:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "graft",
            "serve",
            str(checkpoint),
            "--port",
            "0",
            "--model-name",
            "bench",
            "--max-batch",
            str(max_batch),
            "--max-queue",
            str(max_queue),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env,
    )
    line = proc.stdout.readline()  # type: ignore[union-attr]
    match = SERVING_LINE.search(line)
    if match is None:
        proc.kill()
        raise RuntimeError(f"graft serve did not start: {line!r}")
    return proc, f"http://127.0.0.1:{match.group(1)}"


def stop_server(proc: subprocess.Popen) -> None:
    proc.send_signal(2)  # SIGINT: a clean shutdown
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def prompts(count: int, prompt_tokens: int, seed: int) -> list[str]:
    """Distinct prompts of about `prompt_tokens` bytes (the bytes tokenizer: one token a byte)."""
    rng = random.Random(seed)
    out = []
    for i in range(count):
        text = f"{i}: "
        while len(text) < prompt_tokens:
            text += rng.choice(WORDS) + " "
        out.append(text[:prompt_tokens])
    return out


async def one_request(client: httpx.AsyncClient, body: dict) -> Sample:
    started = time.perf_counter()
    ttft = None
    tokens = 0
    try:
        async with client.stream("POST", "/v1/completions", json=body) as response:
            if response.status_code != 200:
                return Sample(
                    False, error=f"HTTP {response.status_code}: {(await response.aread())[:200]!r}"
                )
            done = False
            async for line in response.aiter_lines():
                if not line.startswith("data: "):
                    continue
                data = line[6:]
                if data == "[DONE]":
                    done = True
                    break
                chunk = json.loads(data)
                if "error" in chunk:
                    return Sample(False, error=str(chunk["error"]))
                if chunk.get("usage"):
                    tokens = chunk["usage"]["completion_tokens"]
                if ttft is None and chunk["choices"] and chunk["choices"][0]["text"]:
                    ttft = time.perf_counter() - started
            if not done:
                return Sample(False, error="stream ended without [DONE]")
    except httpx.HTTPError as err:
        return Sample(False, error=f"{type(err).__name__}: {err}")
    return Sample(True, time.perf_counter() - started, ttft, tokens)


async def load(base: str, bodies: list[dict], concurrency: int) -> tuple[list[Sample], float]:
    queue: asyncio.Queue[tuple[int, dict]] = asyncio.Queue()
    for item in enumerate(bodies):
        queue.put_nowait(item)
    results: list[Sample | None] = [None] * len(bodies)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(
        base_url=base, timeout=httpx.Timeout(600.0), limits=limits
    ) as client:
        for body in bodies[:2]:  # warm-up, not counted
            await one_request(client, {**body, "max_tokens": 4})

        async def worker() -> None:
            while not queue.empty():
                index, body = queue.get_nowait()
                results[index] = await one_request(client, body)

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - started
    return [r for r in results if r is not None], wall


def run_arm(
    name: str, checkpoint: Path, max_batch: int, bodies: list[dict], args: argparse.Namespace
) -> ArmResult:
    proc, base = start_server(checkpoint, max_batch, max(64, args.concurrency * 2), args.threads)
    try:
        samples, wall = asyncio.run(load(base, bodies, args.concurrency))
    finally:
        stop_server(proc)
    return ArmResult(name, max_batch, wall, samples)


def table(results: list[ArmResult]) -> str:
    lines = [
        "| arm | max batch | requests | errors | wall s | req/s | gen tok/s | p50 latency s "
        "| p95 latency s | p50 TTFT s | p95 TTFT s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        row = r.row()
        lines.append(
            f"| {row['arm']} | {row['max_batch']} | {row['requests']} | {row['errors']} "
            f"| {row['wall_s']:.1f} | {row['req_s']:.2f} | {row['tok_s']:.0f} "
            f"| {row['p50_latency_s']:.2f} | {row['p95_latency_s']:.2f} "
            f"| {row['p50_ttft_s']:.3f} | {row['p95_ttft_s']:.3f} |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--preset", default="micro", help="model preset, random init (default: micro, ~4M params)"
    )
    parser.add_argument("--requests", type=int, default=256)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument(
        "--max-batch", type=int, default=16, help="the batched arm's --max-batch (default: 16)"
    )
    parser.add_argument("--prompt-tokens", type=int, default=32)
    parser.add_argument(
        "--max-tokens", type=int, default=32, help="new tokens per request (default: 32)"
    )
    parser.add_argument(
        "--threads", type=int, default=os.cpu_count() or 1, help="server OMP threads"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()

    bodies = [
        {
            "model": "bench",
            "prompt": prompt,
            "max_tokens": args.max_tokens,
            "temperature": 0.8,
            "seed": args.seed + i,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        for i, prompt in enumerate(prompts(args.requests, args.prompt_tokens, args.seed))
    ]
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = make_checkpoint(Path(tmp), args.preset, args.seed)
        results = [
            run_arm("batched", checkpoint, args.max_batch, bodies, args),
            run_arm("sequential", checkpoint, 1, bodies, args),
        ]

    batched, sequential = results
    print(
        f"graft serve under load: {args.requests} requests from {args.concurrency} "
        f"concurrent clients, preset {args.preset} (random init, bytes tokenizer), "
        f"prompts ~{args.prompt_tokens} tokens, "
        f"{args.max_tokens} new tokens each, streamed; server OMP threads {args.threads}; "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores\n"
    )
    print(table(results))
    print(
        "\ncontinuous batching vs one at a time: "
        f"{batched.row()['tok_s'] / sequential.row()['tok_s']:.2f}x "
        f"generated tokens/s, {batched.row()['req_s'] / sequential.row()['req_s']:.2f}x requests/s"
    )
    problems = []
    for r in results:
        for sample in r.errors[:3]:
            problems.append(f"{r.name}: {sample.error}")
    if (
        batched.tokens != sequential.tokens
    ):  # possible only through a near-tie flipped by batched float sums
        print(
            "note: the arms generated different token counts "
            f"({batched.tokens} vs {sequential.tokens})"
        )
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "args": {k: str(v) for k, v in vars(args).items()},
                    "results": [r.row() for r in results],
                },
                indent=2,
            )
        )
    if problems:
        print("\nFAILED:\n" + "\n".join(problems))
        return 1
    print("errors: none")
    return 0


if __name__ == "__main__":
    sys.exit(main())
