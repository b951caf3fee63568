"""`alrt serve` latency and throughput at 1, 4 and 16 concurrent clients, over loopback.

    python benchmarks/serve_latency.py --model model.alrt [--clients 1,4,16] [--requests 8] [--max-tokens 32]
                                       [--threads 1] [--json-out FILE] [--json]

Starts `alrt serve MODEL --port 0` as a subprocess (so clients and server do not share an interpreter), waits for
it to load, warms it up, then for each concurrency level runs that many client threads, each sending `--requests`
streamed completions one after another with the official `openai` client (temperature 0, `max_tokens` fixed,
prompts rotating over a fixed set). Per request: latency (request sent → `[DONE]`) and time to first token
(request sent → first non-empty text chunk); per level: p50/p95 of both, requests/s and generated tokens/s over the
level's wall time. The single model worker serves requests one at a time, so latency grows with the number of
clients while throughput stays about flat; the clients run on the same machine and take some CPU from it.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import openai

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from alrt_core.fileio import atomic_write_text  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
PROMPTS = ["KING HENRY.\nOnce more unto the breach", "To be, or not to be", "ROMEO.\nBut soft, what light",
           "Friends, Romans, countrymen", "MACBETH.\nIs this a dagger", "O, that this too too solid flesh"]


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[index]


class ServerProcess:
    def __init__(self, model: Path, max_tokens: int, max_queue: int, threads: int, parallel: int | None) -> None:
        command = [sys.executable, "-m", "alrt_cli", "serve", str(model), "--port", "0", "--max-queue", str(max_queue),
                   "--max-tokens-cap", str(max_tokens), "--model-name", "bench", "--threads", str(threads)]
        if parallel is not None:
            command += ["--parallel", str(parallel)]
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self.process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, env=env)
        assert self.process.stderr is not None
        first = self.process.stderr.readline()
        if "alrt serve: http" not in first:
            raise SystemExit(f"the server did not start: {first}{self.process.stderr.read()}")
        self.url = first.split()[2]
        for line in self.process.stderr:  # wait for "ready", then keep draining so the pipe never blocks it
            if line.startswith("ready"):
                self.ready_line = line.strip()
                break
        else:
            raise SystemExit(f"the server exited while loading (code {self.process.wait()})")
        threading.Thread(target=lambda: [None for _ in self.process.stderr], daemon=True).start()

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(30)


def one_request(client: openai.OpenAI, prompt: str, max_tokens: int) -> dict[str, float]:
    started = time.perf_counter()
    first = None
    tokens = 0
    stream = client.completions.create(model="bench", prompt=prompt, max_tokens=max_tokens, temperature=0, stream=True,
                                       stream_options={"include_usage": True})
    for chunk in stream:
        if first is None and chunk.choices and chunk.choices[0].text:
            first = time.perf_counter()
        if chunk.usage is not None:
            tokens = chunk.usage.completion_tokens
    ended = time.perf_counter()
    return {"latency": ended - started, "ttft": (first or ended) - started, "tokens": tokens}


def run_level(url: str, clients: int, requests: int, max_tokens: int) -> dict[str, Any]:
    results: list[dict[str, float]] = []
    errors: list[str] = []
    lock = threading.Lock()
    start_line = threading.Barrier(clients + 1)

    def client_loop(index: int) -> None:
        client = openai.OpenAI(base_url=url, api_key="x", max_retries=0, timeout=600)
        start_line.wait()
        for number in range(requests):
            try:
                outcome = one_request(client, PROMPTS[(index + number) % len(PROMPTS)], max_tokens)
            except openai.OpenAIError as error:
                with lock:
                    errors.append(f"{type(error).__name__}: {error}")
                continue
            with lock:
                results.append(outcome)

    threads = [threading.Thread(target=client_loop, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    start_line.wait()
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    latencies, ttfts = [r["latency"] for r in results], [r["ttft"] for r in results]
    tokens = sum(r["tokens"] for r in results)
    return {
        "clients": clients, "requests": len(results), "errors": len(errors), "error_samples": errors[:3],
        "wall_seconds": wall, "latency_p50": percentile(latencies, 0.5), "latency_p95": percentile(latencies, 0.95),
        "ttft_p50": percentile(ttfts, 0.5), "ttft_p95": percentile(ttfts, 0.95),
        "latency_mean": statistics.fmean(latencies), "requests_per_second": len(results) / wall,
        "tokens": tokens, "tokens_per_second": tokens / wall,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True, help="a .alrt artifact or a training checkpoint")
    parser.add_argument("--clients", default="1,4,16", help="comma-separated concurrency levels")
    parser.add_argument("--requests", type=int, default=8, help="requests per client at each level")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="the server's torch threads (alrt serve --threads)")
    parser.add_argument("--parallel", type=int, default=None, help="alrt serve --parallel (default: the server's)")
    parser.add_argument("--json-out", type=Path, default=RESULTS / "serve_latency.json")
    parser.add_argument("--json", action="store_true", help="print the report as one JSON object")
    args = parser.parse_args()
    if not args.model.is_file():
        raise SystemExit(f"no such model file: {args.model}")
    levels = [int(part) for part in args.clients.split(",")]
    server = ServerProcess(args.model, args.max_tokens, max_queue=max(levels) * 2, threads=args.threads,
                           parallel=args.parallel)
    try:
        warm = openai.OpenAI(base_url=server.url, api_key="x", max_retries=0)
        for number in range(args.warmup):
            one_request(warm, PROMPTS[number % len(PROMPTS)], args.max_tokens)
        rows = [run_level(server.url, clients, args.requests, args.max_tokens) for clients in levels]
    finally:
        server.stop()
    report = {"model": str(args.model), "server": server.ready_line, "threads": args.threads, "max_tokens": args.max_tokens,
              "requests_per_client": args.requests, "levels": rows}
    atomic_write_text(args.json_out, json.dumps(report, indent=2) + "\n")
    if args.json:
        print(json.dumps(report))
        return
    print(f"{args.model} ({server.ready_line}); {args.threads} server thread(s); streamed completions of "
          f"{args.max_tokens} tokens, temperature 0")
    print(f"{'clients':>7} {'requests':>8} {'p50 ms':>8} {'p95 ms':>8} {'TTFT p50':>9} {'TTFT p95':>9} "
          f"{'req/s':>7} {'tok/s':>7} {'errors':>6}")
    for row in rows:
        print(f"{row['clients']:>7} {row['requests']:>8} {row['latency_p50'] * 1e3:>8.1f} {row['latency_p95'] * 1e3:>8.1f} "
              f"{row['ttft_p50'] * 1e3:>9.1f} {row['ttft_p95'] * 1e3:>9.1f} {row['requests_per_second']:>7.2f} "
              f"{row['tokens_per_second']:>7.1f} {row['errors']:>6}")
    base = rows[0]["tokens_per_second"]
    print("throughput vs 1 client: " + ", ".join(f"{r['clients']}: {r['tokens_per_second'] / base:.2f}×" for r in rows))
    print(f"JSON: {args.json_out}")


if __name__ == "__main__":
    main()
