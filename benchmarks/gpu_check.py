"""One prepared run that proves ALRT's GPU path (issue #17): every user-facing command, as a user runs it, on one GPU.

Steps, in order, each running the `alrt` CLI in a subprocess as a user would: `install` (the carried wheels and
every module the commands import), `data` (the shards prepared at the golf vocabulary), `train_golf` (`alrt train
--preset golf` for a fixed wallclock), `quantize` (its checkpoint to a 16 MB artifact), `eval` (sliding windows, with
and without legal TTT), `generate`, `serve` (one streamed chat completion over HTTP) and `train_golf_lowrank`. The
low-rank run comes last so that the whole golf pipeline is proven even when a run is cut off at the device's limit.
The first step that fails ends the run: its name goes to stderr and into the JSON, and the exit status is 1.

    python benchmarks/gpu_check.py --prepare-data data/gpu_check   # here, once: the embedded corpus at vocab 8192
    python benchmarks/gpu_check.py --download-wheels               # here, once: what the device image lacks, in .whl/
    bash benchmarks/gpu_check.sh --data data/gpu_check             # on the GPU machine (no network there)
    python benchmarks/gpu_check.py --device cpu --smoke            # anywhere, under a minute: the same steps, tiny

Writes `gpu_check.json` (figures of every step), `gpu_check.log` (every command and its output) and each run's
`train.jsonl` to the output folder ($OUT when set, else runs/gpu_check); checkpoints and the artifact stay in the
work folder (a temp folder unless --work-dir), so the output folder holds 4 small files.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = Path(__file__).resolve()
sys.path.insert(0, str(ROOT))

from alrt_core.fileio import atomic_write_text  # noqa: E402  (stdlib only: the report is written even without torch)

# Internal modes of this file, run as subprocesses: the `alrt` CLI with a peak-memory report at exit, and the probe of
# the install step (in a subprocess, so this process never initialises CUDA and holds no GPU memory).
AS_ALRT = "--as-alrt"
PROBE = "--probe"
MARK = "gpu_check:"  # prefix of the lines the children add to their stderr

STEP_NAMES = ("install", "data", "train_golf", "quantize", "eval", "generate", "serve", "train_golf_lowrank")
BUDGET = "16MB"
SMOKE_VOCAB = 384
SMOKE_STEPS = 6
SMOKE_WORKS = ("The Tempest", "Julius Caesar", "Hamlet")  # cut to SMOKE_CHARS each: a tokenizer in a few seconds
SMOKE_CHARS = 40_000
PROMPT = "ROMEO."

# The parameter-golf 2026-04-09 record trained 786,432 tokens per step in ~83-122 ms on 8xH100: 0.8-1.2M tokens/s
# per GPU. The golf run's tokens/s on one GPU is reported as a ratio to 1.0M.
ANCHOR_TOKENS_PER_S = 1.0e6
ANCHOR = "parameter-golf 2026-04-09 record: 786,432 tokens/step in ~83-122 ms on 8xH100 = ~0.8-1.2M tokens/s per GPU"

# Dense (no sparsity) bf16 tensor-core peaks from NVIDIA's data sheets; the first name found in the GPU's name wins.
BF16_PEAKS = (("H100 PCIe", 756e12), ("H200", 989.4e12), ("H100", 989.4e12), ("A100", 312e12), ("L40S", 362e12))
FLOPS_FORMULA = ("6*(projection weights of every layer application + head) + 12*applications*seq_len*model_dim "
                 "per token (fwd+bwd, causal mask not discounted), at the run's final ranks and recurrence state")

# What the steps' commands import, checked by the install step (onnx, onnxruntime and matplotlib serve only
# `alrt export` and `alrt inspect`: not checked).
PROBE_MODULES = ("torch", "numpy", "sentencepiece", "safetensors", "zstandard", "brotli", "typer", "rich",
                 "prometheus_client", "fastapi", "starlette", "pydantic", "uvicorn",
                 "alrt_cli.app", "serve.server")

# pyproject's dependencies, and theirs, that the device image lacks (or may hold older than these pins require:
# pydantic needs typing-extensions>=4.16); carried as wheels at the versions installed where --download-wheels runs.
WHEEL_PACKAGES = ("zstandard", "brotli", "fastapi", "starlette", "pydantic", "pydantic-core", "annotated-types",
                  "typing-inspection", "typing-extensions", "opentelemetry-api", "uvicorn")
DEVICE_PYTHON = "3.12"
DEVICE_PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64",
                    "manylinux2014_x86_64", "manylinux1_x86_64")

# Subprocess limits (seconds): a hung command fails its step instead of eating the device's whole command limit.
TRAIN_EXTRA_SECONDS = 300  # start-up, final evaluation and checkpoint writes beyond --train-minutes
LIMITS = {"probe": 180, "data": 900, "smoke_train": 300, "quantize": 600, "eval": 300, "generate": 180, "serve": 180}


class StepFailed(Exception):
    """A step's check failed; `figures` are what it measured before that, kept in the JSON."""

    def __init__(self, message: str, figures: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.figures = figures or {}


# -- children -------------------------------------------------------------------------------------------------------

def report_peak_memory() -> None:
    """At a child's exit: the CUDA allocator's peak (when it used CUDA) and the process's peak RSS, on stderr."""
    import resource

    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        print(f"{MARK} peak_cuda_allocated_bytes={torch.cuda.max_memory_allocated()}", file=sys.stderr)
        print(f"{MARK} peak_cuda_reserved_bytes={torch.cuda.max_memory_reserved()}", file=sys.stderr)
    print(f"{MARK} peak_rss_bytes={resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}", file=sys.stderr)


def as_alrt(argv: list[str]) -> None:
    """`alrt ARGV` in this process (the train log carries no memory figures, so the child reports them at exit)."""
    import atexit

    atexit.register(report_peak_memory)
    sys.argv = ["alrt", *argv]
    from alrt_cli.app import main

    main()


def probe() -> None:
    """One JSON line: interpreter, every module of PROBE_MODULES (version, or why it failed to import), torch/CUDA."""
    import importlib
    import platform

    versions: dict[str, str] = {}
    missing: dict[str, str] = {}
    for name in PROBE_MODULES:
        try:
            module = importlib.import_module(name)
        except Exception as error:  # any failure to import is the finding
            missing[name] = f"{type(error).__name__}: {error}"
            continue
        versions[name] = str(getattr(module, "__version__", "") or Path(getattr(module, "__file__", "") or "?").parent)
    info: dict[str, Any] = {"python": platform.python_version(), "executable": sys.executable, "versions": versions,
                            "missing": missing}
    if "torch" in versions:
        import torch

        available = torch.cuda.is_available()
        info.update(torch=torch.__version__, cuda=torch.version.cuda, cuda_available=available)
        if available:
            props = torch.cuda.get_device_properties(0)
            info.update(gpu=props.name, gpu_memory_bytes=props.total_memory, capability=f"{props.major}.{props.minor}",
                        bf16=torch.cuda.is_bf16_supported(), gpu_count=torch.cuda.device_count())
    print(json.dumps(info))


# -- the log and the commands --------------------------------------------------------------------------------------

class RunLog:
    """gpu_check.log: every command with its full output, in order (the JSON keeps the figures). Without a path
    (the preparation modes) it goes to stderr."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        if path is not None:
            path.write_text("", encoding="utf-8")

    def write(self, text: str) -> None:
        if self.path is None:
            sys.stderr.write(text)
            return
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(text)

    def section(self, title: str, body: str = "") -> None:
        self.write(f"\n===== {title}\n{body}" + ("" if not body or body.endswith("\n") else "\n"))

    def command(self, argv: list[str], stdout: str, stderr: str, status: str, seconds: float) -> None:
        self.section(f"$ {' '.join(argv)}", f"----- stdout\n{stdout}----- stderr\n{stderr}"
                                            f"----- {status} after {seconds:.1f} s\n")


@dataclass
class Finished:
    stdout: str
    stderr: str
    seconds: float


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The repository first on the path (the CLI runs from this checkout whether or not it is installed); wide
    console lines (rich wraps at 80 columns when not on a terminal, which would split the lines parsed here)."""
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path, "COLUMNS": "200", "PYTHONUNBUFFERED": "1", **(extra or {})}


def as_text(output: str | bytes | None) -> str:
    """A TimeoutExpired's output is bytes even in text mode."""
    if output is None:
        return ""
    return output.decode("utf-8", "replace") if isinstance(output, bytes) else output


def last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.startswith(MARK)]
    return lines[-1] if lines else "(no output)"


def run_child(log: RunLog, argv: list[str], timeout: float, env: dict[str, str] | None = None) -> Finished:
    """Run `argv` to the end within `timeout` seconds, logged; a non-zero exit or the timeout fails the step."""
    what = f"alrt {argv[3]}" if argv[2:3] == [AS_ALRT] else "probe"
    started = time.perf_counter()
    try:
        done = subprocess.run(argv, cwd=ROOT, env=child_env(env), capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as expired:
        log.command(argv, as_text(expired.stdout), as_text(expired.stderr), "killed: timeout", timeout)
        raise StepFailed(f"`{what}` did not finish within {timeout:.0f} s") from None
    seconds = time.perf_counter() - started
    log.command(argv, done.stdout, done.stderr, f"exit {done.returncode}", seconds)
    if done.returncode != 0:
        raise StepFailed(f"`{what}` exited with {done.returncode}: {last_line(done.stderr)}")
    return Finished(done.stdout, done.stderr, seconds)


def alrt_argv(*args: str) -> list[str]:
    return [sys.executable, str(SCRIPT), AS_ALRT, *args]


def json_output(finished: Finished) -> dict[str, Any]:
    """The one JSON object a `--json` command prints (the last line that parses)."""
    for line in reversed(finished.stdout.splitlines()):
        if line.startswith("{"):
            try:
                return json.loads(line)
            except json.JSONDecodeError:
                continue
    raise StepFailed(f"no JSON on stdout: {last_line(finished.stdout)}")


def markers(stderr: str) -> dict[str, int]:
    """The `gpu_check: key=value` lines a child printed at exit (peak memory)."""
    found = {}
    for match in re.finditer(rf"^{MARK} (\w+)=(\d+)$", stderr, re.MULTILINE):
        found[match.group(1)] = int(match.group(2))
    return found


def peak_memory(stderr: str) -> dict[str, int | None]:
    found = markers(stderr)
    return {"peak_cuda_allocated_bytes": found.get("peak_cuda_allocated_bytes"),
            "peak_cuda_reserved_bytes": found.get("peak_cuda_reserved_bytes"),
            "peak_rss_bytes": found.get("peak_rss_bytes")}


# -- data ----------------------------------------------------------------------------------------------------------

def golf_vocab() -> int:
    """The golf presets' vocabulary (raw text and the embedded corpus are prepared at it)."""
    from alrt_core.config import preset

    return preset("golf").data.vocab_size


def write_corpus(folder: Path, smoke: bool) -> tuple[Path, Path]:
    """The embedded corpus as train.jsonl and val.jsonl, split by work as `alrt train` splits it (the held-out works
    for validation); smoke: a few works cut short, and the start of the sonnets."""
    from alrt_core.data.corpus import SHAKESPEARE_VALIDATION_TITLES, load_shakespeare

    documents = load_shakespeare()
    if smoke:
        train = [(doc.title, doc.text[:SMOKE_CHARS]) for doc in documents if doc.title in SMOKE_WORKS]
        val = [(doc.title, doc.text[: SMOKE_CHARS // 8]) for doc in documents if doc.title == "Sonnets"]
    else:
        train = [(doc.title, doc.text) for doc in documents if doc.title not in SHAKESPEARE_VALIDATION_TITLES]
        val = [(doc.title, doc.text) for doc in documents if doc.title in SHAKESPEARE_VALIDATION_TITLES]
    paths = folder / "train.jsonl", folder / "val.jsonl"
    for path, docs in zip(paths, (train, val), strict=True):
        path.write_text("".join(json.dumps({"title": title, "text": text}) + "\n" for title, text in docs),
                        encoding="utf-8")
    return paths


def prepare_data(log: RunLog, folder: Path, vocab: int, smoke: bool) -> dict[str, Any]:
    """`alrt data prepare` of the embedded corpus into `folder` (tokenizer trained on the training works only)."""
    with tempfile.TemporaryDirectory(prefix="gpu_check-corpus-") as temp:
        train, val = write_corpus(Path(temp), smoke)
        finished = run_child(log, alrt_argv("data", "prepare", str(train), "--val-input", str(val), "--out",
                                            str(folder), "--vocab-size", str(vocab), "--json"), LIMITS["data"])
    return {"prepare_seconds": round(finished.seconds, 1), **json_output(finished)}


def describe_dataset(folder: Path, vocab: int | None) -> dict[str, Any]:
    """What the run will train on, from the folder's meta.json; fails unless shards and tokenizer are there and, for
    the golf presets, the vocabulary is theirs."""
    meta_path = folder / "meta.json"
    if not meta_path.is_file():
        raise StepFailed(f"no prepared dataset at {folder} (no meta.json): run "
                         f"`python benchmarks/gpu_check.py --prepare-data {folder}` first")
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    shards = {split: sorted(p.name for p in folder.glob(f"{split}_*.bin")) for split in ("train", "val")}
    if not shards["train"] or not shards["val"] or not (folder / "tokenizer.model").is_file():
        raise StepFailed(f"{folder}: needs train_*.bin, val_*.bin and tokenizer.model, found {shards}")
    size = meta.get("vocab_size")  # the trained tokenizer's (sentencepiece may stop short of the size asked for)
    if vocab is not None and size != vocab:
        raise StepFailed(f"{folder} was prepared at vocabulary {size}; the golf presets use {vocab}")
    return {"data_dir": str(folder), "vocab_size": size, "train_tokens": meta.get("train_tokens"),
            "val_tokens": meta.get("val_tokens"), "train_bytes": meta.get("train_bytes"),
            "val_bytes": meta.get("val_bytes"), "shards": shards}


# -- training figures ----------------------------------------------------------------------------------------------

@dataclass
class StepTime:
    step: int
    seconds: float
    tokens: int
    time: float  # when the step's event was written (Unix seconds)


def step_times(events: list[dict[str, Any]]) -> list[StepTime]:
    """Each optimizer step's own seconds: its tokens over its tok/s (rank updates and compilation before the first
    step are counted in `elapsed` but not here)."""
    times, seen = [], 0
    for event in events:
        if event["event"] == "train_step" and event.get("tok_s"):
            tokens = event["tokens"] - seen
            seen = event["tokens"]
            times.append(StepTime(event["step"], tokens / event["tok_s"], tokens, event["time"]))
    return times


# Torch's log lines start `V1201 20:18:22.640000 <pid> <file>:<line>] [0/1] [__recompiles] Recompiling function f in`
# (local time, no year): TORCH_LOGS=recompiles prints one per recompilation, with the guard that failed below it.
RECOMPILE_LINE = re.compile(
    r"^[A-Z](\d\d)(\d\d) (\d\d):(\d\d):(\d\d)\.(\d{6}) .*\[__recompiles\] Recompiling function (\S+)")
GUARD_LINE = re.compile(r"\[__recompiles\]\s+- (.+)$")


def log_time(month: int, day: int, clock: tuple[int, int, int, int], now: float) -> float:
    """A torch log time as Unix seconds: this year's date unless that lies ahead (a run across New Year)."""
    year = datetime.fromtimestamp(now).year
    for candidate in (year, year - 1):
        stamp = datetime(candidate, month, day, *clock).timestamp()
        if stamp <= now + 86_400:
            return stamp
    return stamp


def recompiles(stderr: str, steps: list[StepTime], now: float | None = None) -> list[dict[str, Any]]:
    """Every recompilation torch logged, with the step it happened in: the first step whose event came after it (the
    compile runs inside that step's forward call); None when it came after the last step."""
    now = time.time() if now is None else now
    found: list[dict[str, Any]] = []
    for line in stderr.splitlines():
        match = RECOMPILE_LINE.match(line)
        if match:
            month, day, hour, minute, second, micro = map(int, match.groups()[:6])
            at = log_time(month, day, (hour, minute, second, micro), now)
            step = next((s.step for s in steps if s.time >= at), None)
            found.append({"step": step, "function": match.group(7), "reason": None})
        elif found and found[-1]["reason"] is None and (guard := GUARD_LINE.search(line)):
            found[-1]["reason"] = guard.group(1).strip()
    return found


def disturbances(events: list[dict[str, Any]], recompiled: list[dict[str, Any]]) -> list[int]:
    """Steps whose time includes work a steady step does not: the first (warm-up), the step after a switch that
    changes the compiled graph (recurrence, QAT, factorisation, a rank change), and any step that recompiled."""
    steps = [1]
    for event in events:
        if event["event"] in ("recurrence_on", "qat_on", "factorize") or (
                event["event"] == "rank_update" and event.get("changed")):
            steps.append(event["step"] + 1)  # emitted before that step's work (rank updates: after, same effect)
    steps += [r["step"] for r in recompiled if r["step"] is not None]
    return sorted(set(steps))


def steady_tail(steps: list[StepTime], disturbed: list[int]) -> tuple[list[StepTime], str]:
    """The steps after the last disturbance; when fewer than 2 remain, the second half of the run (said so)."""
    tail = [s for s in steps if s.step > max(disturbed)]
    if len(tail) >= 2:
        return tail, f"steps after step {max(disturbed)} (the last one with compilation or a graph switch)"
    half = steps[len(steps) // 2:] or steps
    return half, "second half of the run (disturbances reach too late for a clean tail)"


def final_ranks(events: list[dict[str, Any]]) -> dict[str, int | None]:
    """Each projection's rank at the end: run_start's, then every factorisation and rank change in order."""
    ranks: dict[str, int | None] = {}
    for event in events:
        if event["event"] == "run_start":
            ranks = dict(event["layer_ranks"])
        elif event["event"] == "factorize":
            ranks.update(event["ranks"])
        elif event["event"] == "rank_change":
            ranks[event["layer"]] = event["new_rank"]
    return ranks


def flops_per_token(config: dict[str, Any], ranks: dict[str, int | None], looped: bool) -> int:
    """Training FLOPs per token (FLOPS_FORMULA) of the model as it ran at the end, built on the meta device from the
    run's config and ranks: each layer application counts its block's projection weights (depth recurrence runs
    some blocks several times)."""
    import torch

    from alrt_core.config import RunConfig
    from alrt_core.model.gpt import GPT

    model_config = RunConfig.from_dict(config).model
    with torch.device("meta"):
        model = GPT(model_config, layer_ranks=ranks)
    block_weights = [sum(p.numel() for name, layer in model.projections().items()
                         if name.startswith(f"blocks.{index}.") for p in layer.parameters())
                     for index in range(model_config.num_layers)]
    schedule = model.recurrence.looped if looped else model.recurrence.plain
    head = (model.head.weight if model.head is not None else model.embed.weight).numel()
    matmul = sum(block_weights[block] for block in schedule) + head
    return 6 * matmul + 12 * len(schedule) * model_config.seq_len * model_config.model_dim


def training_figures(run_dir: Path, stderr: str, peak_flops: float | None, count_flops: bool) -> dict[str, Any]:
    """Speed, MFU, memory, recompilations and bpb of one `alrt train` run, from its train.jsonl and stderr.
    `count_flops` off (CPU smoke runs: no peak to compare with) spares this process importing torch."""
    from alrt_core.training.events import read_events

    events = read_events(run_dir / "train.jsonl")
    start = next(e for e in events if e["event"] == "run_start")
    end = next((e for e in events if e["event"] == "run_end"), None)
    steps = step_times(events)
    if not steps or end is None:
        raise StepFailed(f"{run_dir / 'train.jsonl'}: no training step or no run_end")
    recompiled = recompiles(stderr, steps)
    disturbed = disturbances(events, recompiled)
    tail, tail_rule = steady_tail(steps, disturbed)
    step_seconds = statistics.median(s.seconds for s in tail)
    tokens_per_step = statistics.median(s.tokens for s in tail)
    tokens_per_s = tokens_per_step / step_seconds
    recurrence = [e["step"] for e in events if e["event"] == "recurrence_on"]
    looped = bool(recurrence) and min(recurrence) < tail[0].step
    config = json.loads((run_dir / "config.json").read_text(encoding="utf-8"))
    flops = flops_per_token(config, final_ranks(events), looped) if count_flops else None
    fallback = next((e.get("reason") for e in events if e["event"] == "compile_fallback"), None)
    first = steps[0]
    return {
        "device": start.get("device"), "precision": start.get("precision"), "compiled": start.get("compiled"),
        "compile_fallback": fallback, "params": start.get("params"), "batch_tokens": start.get("batch_tokens"),
        "accumulation": start.get("accumulation"), "steps": end["step"], "stop_reason": end.get("reason"),
        "train_seconds": end.get("elapsed"),
        # The budget's seconds before the first step's own time: model compilation (and its first-use probe).
        "seconds_before_first_step": round(first.time - start["time"] - first.seconds, 2),
        "first_step_seconds": round(first.seconds, 3),
        "tail_steps": len(tail), "tail": tail_rule,
        "ms_per_step": round(step_seconds * 1000, 2), "tokens_per_s": round(tokens_per_s, 1),
        "tokens_per_s_overall": round(end["tokens"] / max(end.get("elapsed") or 0, 1e-9), 1),
        "flops_per_token": flops, "flops_formula": FLOPS_FORMULA, "recurrence_in_tail": looped,
        "peak_bf16_flops": peak_flops,
        "mfu": round(tokens_per_s * flops / peak_flops, 4) if flops and peak_flops else None,
        "recompiles": recompiled, "recompile_steps": [r["step"] for r in recompiled],
        "recurrence_on_step": recurrence[0] if recurrence else None,
        "rank_updates_changed": sum(1 for e in events if e["event"] == "rank_update" and e.get("changed")),
        "final_val_bpb": end.get("final_val_bpb"), "best_val_bpb": end.get("best_val_bpb"),
        **peak_memory(stderr),
    }


# -- serving -------------------------------------------------------------------------------------------------------

class ServerProcess:
    """`alrt serve` on a port the OS picks (--port 0: no race for a free port); its output is read as it comes, for
    the URL it prints on stderr and for the log."""

    def __init__(self, argv: list[str], env: dict[str, str]) -> None:
        self.argv = argv
        # One stream: a pipe nobody reads could fill and block the server.
        self.process = subprocess.Popen(argv, cwd=ROOT, env=child_env(env), stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, text=True)
        self.output: list[str] = []
        self.url: str | None = None
        self.url_seen = threading.Event()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.output.append(line)
            match = re.search(r"(http://\S+?)/v1\b", line)
            if match and self.url is None:
                self.url = match.group(1)
                self.url_seen.set()
        self.url_seen.set()  # the process ended: stop waiting

    def wait_healthy(self, deadline: float) -> float:
        """Seconds until GET /health answered 200 (503 while the model loads)."""
        started = time.perf_counter()
        self.url_seen.wait(max(0.0, deadline - time.monotonic()))
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise StepFailed(f"alrt serve exited with {self.process.returncode}: {last_line(''.join(self.output))}")
            if self.url is not None:
                try:
                    with urllib.request.urlopen(f"{self.url}/health", timeout=5) as response:
                        if response.status == 200:
                            return time.perf_counter() - started
                except (urllib.error.URLError, ConnectionError, TimeoutError):
                    pass  # 503 while loading, or not listening yet
            time.sleep(0.2)
        raise StepFailed("alrt serve: /health did not answer 200 in time")

    def stop(self) -> int | None:
        """Ctrl-C as a user stops it (uvicorn shuts down cleanly); killed if it does not end in 20 s."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.reader.join(5)
        return self.process.returncode


def stream_chat(url: str, max_tokens: int, timeout: float) -> dict[str, Any]:
    """One streamed /v1/chat/completions request, read as server-sent events: content chunks, [DONE], timings."""
    body = {"model": "gpu-check", "messages": [{"role": "user", "content": "Who is there?"}], "max_tokens": max_tokens,
            "stream": True, "seed": 0}
    request = urllib.request.Request(f"{url}/v1/chat/completions", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
    started = time.perf_counter()
    chunks, text, first, done, finish = 0, "", None, False, None
    with urllib.request.urlopen(request, timeout=timeout) as response:
        for raw in response:
            line = raw.decode("utf-8").strip()
            if not line.startswith("data:"):
                continue
            payload = line[len("data:"):].strip()
            if payload == "[DONE]":
                done = True
                break
            choice = (json.loads(payload).get("choices") or [{}])[0]
            finish = choice.get("finish_reason") or finish
            content = (choice.get("delta") or {}).get("content")
            if content:
                chunks += 1
                text += content
                first = first if first is not None else time.perf_counter() - started
    return {"content_chunks": chunks, "done": done, "finish_reason": finish, "text": text,
            "first_chunk_ms": round(first * 1000, 1) if first is not None else None,
            "request_seconds": round(time.perf_counter() - started, 3)}


# -- the check -----------------------------------------------------------------------------------------------------

@dataclass
class Check:
    args: argparse.Namespace
    out_dir: Path
    work_dir: Path
    log: RunLog
    report: dict[str, Any]
    data_dir: Path | None = None
    peak_flops: float | None = None
    artifact: Path | None = None
    warnings: list[str] = field(default_factory=list)

    @property
    def gpu(self) -> bool:
        return self.args.device != "cpu"

    def child_env(self) -> dict[str, str]:
        """Smoke runs on a CPU use one thread: on a shared 2-core machine two OpenMP threads slow down many-fold
        whenever another process takes a core (see train_throughput in benchmarks/README.md), and tiny shapes gain
        nothing from a second one."""
        if self.args.smoke and not self.gpu and "OMP_NUM_THREADS" not in os.environ:
            return {"OMP_NUM_THREADS": "1"}
        return {}

    def alrt(self, *args: str, timeout: float, env: dict[str, str] | None = None) -> Finished:
        return run_child(self.log, alrt_argv(*args), timeout, {**self.child_env(), **(env or {})})


def bf16_peak(gpu: str | None, override_tflops: float | None) -> tuple[float | None, str]:
    if override_tflops:
        return override_tflops * 1e12, "--peak-tflops"
    for name, flops in BF16_PEAKS:
        if gpu and name in gpu:
            return flops, f"data sheet ({name}, dense bf16)"
    return None, "unknown GPU (pass --peak-tflops)" if gpu else "no GPU"


def step_install(check: Check) -> dict[str, Any]:
    """The wrapper's pip results (offline wheels, editable install), then a probe that imports every module."""
    args = check.args
    figures: dict[str, Any] = {"wheels": args.wheels, "editable_install": args.editable}
    if args.install_log and Path(args.install_log).is_file():
        check.log.section("install (benchmarks/gpu_check.sh)", Path(args.install_log).read_text(errors="replace"))
    if args.wheels == "failed":
        raise StepFailed("pip could not install the carried wheels (.whl/); see gpu_check.log", figures)
    if args.editable == "failed":
        # Not fatal: every command runs as `python -m alrt_cli` from the checkout, installed or not.
        check.warnings.append("`pip install -e .` failed on this machine (see gpu_check.log); ran from the checkout")
    info = json.loads(run_child(check.log, [sys.executable, str(SCRIPT), PROBE], LIMITS["probe"]).stdout)
    check.report.update(python=info["python"], torch=info.get("torch"), cuda=info.get("cuda"), gpu=info.get("gpu"))
    peak, source = bf16_peak(info.get("gpu"), args.peak_tflops)
    check.peak_flops = peak if check.gpu else None
    figures.update({key: info.get(key) for key in ("python", "executable", "torch", "cuda", "cuda_available", "gpu",
                                                   "gpu_count", "gpu_memory_bytes", "capability", "bf16")},
                   versions=info["versions"], peak_bf16_flops=check.peak_flops, peak_source=source)
    if info["missing"]:
        raise StepFailed("cannot import " + "; ".join(f"{k} ({v})" for k, v in info["missing"].items()), figures)
    if check.gpu and not info.get("cuda_available"):
        raise StepFailed("torch sees no CUDA device", figures)
    return figures


def step_data(check: Check) -> dict[str, Any]:
    """--data: the folder prepared beforehand (no tokenizer training here); else prepared now in the work folder."""
    vocab = None if check.args.smoke else golf_vocab()
    if check.args.data:
        folder, prepared = Path(check.args.data).resolve(), None
    else:
        folder = check.work_dir / "data"
        prepared = prepare_data(check.log, folder, vocab or SMOKE_VOCAB, check.args.smoke)
    check.data_dir = folder
    figures = describe_dataset(folder, vocab)
    figures["prepared"] = "beforehand (--data)" if prepared is None else f"now, in {prepared['prepare_seconds']} s"
    return figures


def train(check: Check, name: str, preset: str, smoke_args: list[str]) -> dict[str, Any]:
    """`alrt train` of one preset (smoke: `tiny` for a few steps) on the prepared data; its figures."""
    assert check.data_dir is not None
    run_dir = check.work_dir / name
    args = ["train", "--data", str(check.data_dir), "--out-dir", str(run_dir), "--seed", "0",
            "--device", check.args.device]
    if check.args.smoke:
        args += ["--preset", "tiny", "--max-steps", str(SMOKE_STEPS), *smoke_args]
        timeout = LIMITS["smoke_train"]
    else:
        args += ["--preset", preset, "--max-minutes", f"{check.args.train_minutes:g}"]
        timeout = check.args.train_minutes * 60 + TRAIN_EXTRA_SECONDS
    for setting in check.args.set or []:
        args += ["--set", setting]
    finished = check.alrt(*args, timeout=timeout, env={"TORCH_LOGS": "recompiles"})
    if (run_dir / "train.jsonl").is_file():
        shutil.copyfile(run_dir / "train.jsonl", check.out_dir / f"{name}.jsonl")
    figures = {"preset": "tiny" if check.args.smoke else preset, "run_dir": str(run_dir),
               "wall_seconds": round(finished.seconds, 1),
               **training_figures(run_dir, finished.stderr, check.peak_flops, count_flops=check.gpu)}
    if check.gpu and not str(figures["device"]).startswith("cuda"):
        raise StepFailed(f"trained on {figures['device']}, not on the GPU", figures)
    if figures["compile_fallback"]:
        check.warnings.append(f"{name}: torch.compile fell back to eager ({figures['compile_fallback']})")
    if not figures["tokens_per_s"] > 0 or not finite_positive(figures["final_val_bpb"]):
        raise StepFailed("no positive tokens/s or no finite val bpb", figures)
    return figures


def step_train_golf(check: Check) -> dict[str, Any]:
    return train(check, "train_golf", "golf", ["--rank-policy", "dense"])  # golf is dense; smoke likewise


def step_train_golf_lowrank(check: Check) -> dict[str, Any]:
    return train(check, "train_golf_lowrank", "golf-lowrank", [])  # tiny trains with ALRT's stable policy already


def finite_positive(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def step_quantize(check: Check) -> dict[str, Any]:
    """`alrt quantize` of the golf run's best checkpoint under the 16 MB budget; the command's whole JSON is kept
    (its per-phase seconds are whatever that version reports)."""
    run_dir = check.work_dir / "train_golf"
    checkpoint = run_dir / "best.pt" if (run_dir / "best.pt").is_file() else run_dir / "last.pt"
    artifact = check.work_dir / "golf.alrt"
    calibration = ["--calib-tokens", "4096"] if check.args.smoke else []  # the default 32,768 in the golf run
    finished = check.alrt("quantize", str(checkpoint), "--budget", BUDGET, "--out", str(artifact), "--json",
                          "--device", check.args.device, *calibration, timeout=LIMITS["quantize"])
    result = json_output(finished)
    figures = {"checkpoint": str(checkpoint), "artifact": str(artifact), "wall_seconds": round(finished.seconds, 1),
               "total_bytes": result.get("total_bytes"), "budget": result.get("budget"),
               "headroom": result.get("headroom"), "compressor": result.get("compressor"),
               "phase_seconds": result.get("seconds"), "result": result, **peak_memory(finished.stderr)}
    if not artifact.is_file():
        raise StepFailed(f"no artifact at {artifact}", figures)
    if not isinstance(figures["total_bytes"], int) or figures["total_bytes"] > (figures["budget"] or 0):
        raise StepFailed(f"artifact {figures['total_bytes']} bytes against a budget of {figures['budget']}", figures)
    check.artifact = artifact
    return figures


def step_eval(check: Check) -> dict[str, Any]:
    """`alrt eval --sliding --ttt`: exact sliding-window bpb of the validation split, and the same after legal
    score-first TTT (the embedded split is ~3 chunks of the default 32,768 tokens: a short TTT as it is)."""
    assert check.artifact is not None
    args = ["eval", str(check.artifact), "--sliding", "--ttt", "--device", check.args.device, "--json"]
    if check.args.smoke:  # the tiny context is 64 tokens (the golf record slides by 64 of 2048)
        args += ["--stride", "32", "--ttt-chunk-tokens", "1024", "--ttt-batch", "4", "--ttt-epochs", "1"]
    if check.args.eval_tokens:
        args += ["--max-tokens", str(check.args.eval_tokens)]
    finished = check.alrt(*args, timeout=LIMITS["eval"])
    report = json_output(finished)
    ttt = report.get("ttt") or {}
    figures = {
        "sliding_bpb": report.get("bpb"), "ttt_bpb": ttt.get("bpb"), "ttt_gain": ttt.get("gain"),
        "tokens": report.get("tokens"), "mode": report.get("mode"), "stride": report.get("stride"),
        "seq_len": report.get("seq_len"), "windows": report.get("windows"),
        "bytes_match_decoded_text": report.get("bytes_match_decoded_text"),
        "score_seconds": report.get("seconds"), "score_tokens_per_s": report.get("tokens_per_second"),
        "ttt_chunks": ttt.get("chunks"), "ttt_epochs": ttt.get("epochs"), "ttt_seconds": ttt.get("seconds"),
        "wall_seconds": round(finished.seconds, 1), **peak_memory(finished.stderr),
    }
    if not (finite_positive(figures["sliding_bpb"]) and finite_positive(figures["ttt_bpb"])):
        raise StepFailed("a bpb is missing, not finite or not positive", figures)
    if report.get("mode") != "sliding":
        raise StepFailed(f"scored in {report.get('mode')} windows, not sliding", figures)
    return figures


GENERATE_STATS = re.compile(r"\[(\d+) prompt tokens, (\d+) new, first token after (\d+) ms, ([\d.]+) tok/s, "
                            r"stop: ([^,\]]+)")


def generation_figures(finished: Finished) -> dict[str, Any]:
    match = GENERATE_STATS.search(" ".join(finished.stderr.split()))
    if match is None:
        raise StepFailed(f"no stats line on stderr: {last_line(finished.stderr)}")
    figures = {"prompt_tokens": int(match.group(1)), "new_tokens": int(match.group(2)),
               "first_token_ms": int(match.group(3)), "tokens_per_s": float(match.group(4)),
               "stop_reason": match.group(5).strip(), "text": finished.stdout[:400],
               "wall_seconds": round(finished.seconds, 1), **peak_memory(finished.stderr)}
    if figures["new_tokens"] < 1 or not figures["tokens_per_s"] > 0:
        raise StepFailed("no tokens generated", figures)
    return figures


def step_generate(check: Check) -> dict[str, Any]:
    """`alrt generate` of 64 seeded tokens, eager and (on the GPU) with the compiled, CUDA-graphed decode step;
    speeds from the stats line on stderr; the two texts must be the same tokens' text."""
    assert check.artifact is not None
    argv = ["generate", str(check.artifact), "--seed", "0", "--max-new-tokens", "64", "--prompt", PROMPT,
            "--device", check.args.device]
    figures = generation_figures(check.alrt(*argv, timeout=LIMITS["generate"]))
    if check.gpu:  # on CPU the compile takes about a minute: the smoke run leaves it to the tests
        compiled = generation_figures(check.alrt(*argv, "--compile", timeout=LIMITS["generate"]))
        figures["compiled"] = compiled
        figures["compiled_same_text"] = compiled["text"] == figures["text"]
    return figures


def step_serve(check: Check) -> dict[str, Any]:
    """`alrt serve`, healthy, answers one streamed chat completion with content and [DONE], then stops on Ctrl-C."""
    assert check.artifact is not None
    server = ServerProcess(alrt_argv("serve", str(check.artifact), "--port", "0", "--device", check.args.device),
                           check.child_env())
    started = time.perf_counter()
    figures: dict[str, Any] = {}
    try:
        figures["ready_seconds"] = round(server.wait_healthy(time.monotonic() + LIMITS["serve"]), 2)
        figures["url"] = server.url
        figures.update(stream_chat(server.url, max_tokens=32, timeout=LIMITS["serve"]))
    except (urllib.error.URLError, OSError, json.JSONDecodeError) as error:
        raise StepFailed(f"request failed: {error}", figures) from None
    finally:
        status = server.stop()
        check.log.command(server.argv, "".join(server.output), "(merged into stdout)\n",
                          f"exit {status} after Ctrl-C", time.perf_counter() - started)
        figures["exit_status"] = status
    if figures["content_chunks"] < 1 or not figures["done"]:
        raise StepFailed("the stream had no content chunk or no [DONE]", figures)
    return figures


STEPS: dict[str, Callable[[Check], dict[str, Any]]] = {
    "install": step_install, "data": step_data, "train_golf": step_train_golf, "quantize": step_quantize,
    "eval": step_eval, "generate": step_generate, "serve": step_serve, "train_golf_lowrank": step_train_golf_lowrank,
}
assert tuple(STEPS) == STEP_NAMES


def run_step(check: Check, name: str) -> dict[str, Any]:
    """One step as its JSON entry: ok and its figures, or not ok with the error (tracebacks go to the log)."""
    started = time.perf_counter()
    check.log.section(f"step {name}")
    try:
        if check.args.fail_at == name:
            raise StepFailed("forced by --fail-at")
        entry = {"name": name, "ok": True, **STEPS[name](check)}
    except StepFailed as failure:
        entry = {"name": name, "ok": False, "error": str(failure), **failure.figures}
    except Exception as error:  # a bug in a step's parsing is that step's failure, with the traceback logged
        import traceback

        check.log.write(traceback.format_exc())
        entry = {"name": name, "ok": False, "error": f"{type(error).__name__}: {error}"}
    entry["seconds"] = round(time.perf_counter() - started, 2)
    return entry


def write_report(check: Check) -> None:
    """After every step, so a run cut off at the device's limit still returns what it measured."""
    check.report["warnings"] = check.warnings
    atomic_write_text(check.out_dir / "gpu_check.json", json.dumps(check.report, indent=2, default=str) + "\n")


def golf_anchor(check: Check) -> dict[str, Any] | None:
    golf = next((s for s in check.report["steps"] if s["name"] == "train_golf" and s.get("tokens_per_s")), None)
    if golf is None:
        return None
    return {"anchor": ANCHOR, "tokens_per_s": golf["tokens_per_s"],
            "ratio_to_1M": round(golf["tokens_per_s"] / ANCHOR_TOKENS_PER_S, 4), "comparable": check.gpu
            and not check.args.smoke}


def headline(entry: dict[str, Any]) -> str:
    """The step's main figures in one line for the summary table."""
    def fmt(key: str, label: str, spec: str = "") -> str | None:
        value = entry.get(key)
        return None if value is None else f"{label} {value:{spec}}"

    name = entry["name"]
    parts: list[str | None]
    if name == "install":
        parts = [fmt("torch", "torch"), fmt("cuda", "cuda"), fmt("gpu", "")]
    elif name == "data":
        parts = [fmt("vocab_size", "vocab"), fmt("train_tokens", "train tok", ","), fmt("val_tokens", "val tok", ",")]
    elif name.startswith("train"):
        mem = entry.get("peak_cuda_allocated_bytes") or entry.get("peak_rss_bytes")
        parts = [fmt("steps", "steps"), fmt("ms_per_step", "ms/step", ".1f"), fmt("tokens_per_s", "tok/s", ",.0f"),
                 fmt("mfu", "MFU", ".1%"), f"peak {mem / 2**30:.1f} GiB" if mem else None,
                 f"recompiles at {entry['recompile_steps']}" if entry.get("recompile_steps") else None,
                 fmt("final_val_bpb", "bpb", ".4f")]
    elif name == "quantize":
        parts = [fmt("total_bytes", "bytes", ","), fmt("budget", "of", ","), fmt("wall_seconds", "wall s")]
    elif name == "eval":
        parts = [fmt("sliding_bpb", "sliding bpb", ".4f"), fmt("ttt_bpb", "after TTT", ".4f"),
                 fmt("tokens", "tokens", ",")]
    elif name == "generate":
        parts = [fmt("tokens_per_s", "tok/s", ".1f"), fmt("first_token_ms", "first ms")]
    else:
        parts = [fmt("content_chunks", "chunks"), fmt("first_chunk_ms", "first ms"), fmt("ready_seconds", "ready s")]
    text = ", ".join(p for p in parts if p)
    return text if entry["ok"] else f"FAILED: {entry.get('error')}" + (f" ({text})" if text else "")


def print_summary(check: Check) -> None:
    report = check.report
    print(f"\ngpu_check on {report['device']} ({report.get('gpu') or 'no GPU'}, torch {report.get('torch')}): "
          f"{report['seconds']:.0f} s; JSON {check.out_dir / 'gpu_check.json'}")
    for entry in report["steps"]:
        print(f"  {entry['name']:<19} {'ok  ' if entry['ok'] else 'FAIL'} {entry['seconds']:7.1f} s  {headline(entry)}")
    anchor = report.get("anchor")
    if anchor:
        note = "" if anchor["comparable"] else " (not comparable: no GPU or smoke shapes)"
        print(f"  golf {anchor['tokens_per_s']:,.0f} tokens/s = {anchor['ratio_to_1M']:.3f}x 1.0M{note}; {ANCHOR}")
    for warning in check.warnings:
        print(f"  warning: {warning}")


def default_out_dir() -> Path:
    return Path(os.environ["OUT"]) if os.environ.get("OUT") else ROOT / "runs" / "gpu_check"


def run_check(args: argparse.Namespace) -> int:
    out_dir = (args.out_dir or default_out_dir()).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    work_dir = (args.work_dir or Path(tempfile.mkdtemp(prefix="gpu_check-"))).resolve()
    work_dir.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {
        "mode": "smoke" if args.smoke else "full", "device": args.device, "torch": None, "cuda": None, "gpu": None,
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"), "finished": None, "seconds": None,
        "argv": sys.argv[1:], "work_dir": str(work_dir), "train_minutes": None if args.smoke else args.train_minutes,
        "steps": [], "failed_step": None, "error": None, "anchor": None,
    }
    check = Check(args, out_dir, work_dir, RunLog(out_dir / "gpu_check.log"), report)
    started = time.perf_counter()
    for name in STEP_NAMES:
        entry = run_step(check, name)
        report["steps"].append(entry)
        report["seconds"] = round(time.perf_counter() - started, 1)
        report["anchor"] = golf_anchor(check)
        if not entry["ok"]:
            report["failed_step"], report["error"] = name, entry["error"]
        write_report(check)
        if not entry["ok"]:
            break
    report["finished"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    write_report(check)
    print_summary(check)
    if report["failed_step"]:
        print(f"gpu_check: FAILED at step {report['failed_step']}: {report['error']} (log: {check.log.path})",
              file=sys.stderr)
        return 1
    return 0


# -- preparation modes (here, before the device run) ---------------------------------------------------------------

def ignored_by_git(path: Path) -> bool:
    """Whether git ignores `path` (the device tool carries ignored paths only when `carry` names them)."""
    done = subprocess.run(["git", "check-ignore", "-q", str(path)], cwd=ROOT, capture_output=True)
    return done.returncode == 0


def remind_ignore(path: Path) -> None:
    if not ignored_by_git(path):
        relative = path.resolve().relative_to(ROOT) if path.resolve().is_relative_to(ROOT) else path
        print(f"note: git does not ignore {relative}; keep it out of commits with "
              f"`echo /{relative}/ >> .git/info/exclude`", file=sys.stderr)


def prepare_data_mode(folder: Path) -> int:
    """--prepare-data: the embedded corpus at the golf vocabulary, as the device run's --data (CPU, once)."""
    summary = prepare_data(RunLog(None), folder.resolve(), golf_vocab(), smoke=False)
    print(json.dumps({key: summary.get(key) for key in ("out", "vocab_size", "train_tokens", "val_tokens",
                                                        "train_bytes", "val_bytes", "prepare_seconds")}))
    remind_ignore(folder)
    return 0


def download_wheels_mode(folder: Path) -> int:
    """--download-wheels: WHEEL_PACKAGES at this interpreter's installed versions, for the device's Python."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        pins = [f"{name}=={version(name)}" for name in WHEEL_PACKAGES]
    except PackageNotFoundError as error:
        print(f"error: {error} is not installed here; run this with the project's venv", file=sys.stderr)
        return 2
    platforms = [arg for platform in DEVICE_PLATFORMS for arg in ("--platform", platform)]
    argv = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--python-version",
            DEVICE_PYTHON, "--implementation", "cp", *platforms, "-d", str(folder), *pins]
    print("$ " + " ".join(argv), file=sys.stderr)
    if subprocess.run(argv, cwd=ROOT).returncode != 0:
        return 1
    # pip install with --no-deps stops when two versions of one package lie there (an older download, say).
    names: dict[str, list[str]] = {}
    for wheel in sorted(folder.glob("*.whl")):
        names.setdefault(wheel.name.split("-")[0].lower().replace("_", "-"), []).append(wheel.name)
    doubles = {name: files for name, files in names.items() if len(files) > 1}
    if doubles:
        print(f"error: several versions in {folder}: {doubles}; delete the old ones", file=sys.stderr)
        return 1
    total = sum(w.stat().st_size for w in folder.glob("*.whl"))
    print(f"{len(names)} wheels, {total / 2**20:.1f} MiB in {folder}: {', '.join(pins)}")
    remind_ignore(folder)
    return 0


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", help="cuda (default), cuda:N or cpu")
    parser.add_argument("--smoke", action="store_true",
                        help="tiny preset, a few steps, a small vocabulary prepared on the fly: the steps in seconds")
    parser.add_argument("--data", help="dataset prepared by --prepare-data (default: prepared now, in the work folder)")
    parser.add_argument("--train-minutes", type=float, default=2.0,
                        help="wallclock of each golf training, compilation included (default 2)")
    parser.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE",
                        help="passed to both trainings as alrt train --set (repeatable)")
    parser.add_argument("--eval-tokens", type=int,
                        help="score only this prefix of the validation split (default: all of it)")
    parser.add_argument("--peak-tflops", type=float, help="bf16 peak for MFU (default: the GPU's data sheet)")
    parser.add_argument("--out-dir", type=Path, help="JSON and log ($OUT when set, else runs/gpu_check)")
    parser.add_argument("--work-dir", type=Path, help="runs, checkpoints, the artifact (default: a new temp folder)")
    parser.add_argument("--fail-at", choices=STEP_NAMES, help="debug: fail this step before it runs")
    parser.add_argument("--prepare-data", type=Path, metavar="DIR",
                        help="prepare the embedded corpus at the golf vocabulary into DIR and exit")
    parser.add_argument("--download-wheels", type=Path, nargs="?", const=ROOT / ".whl", metavar="DIR",
                        help="download the wheels the device image lacks into DIR (default .whl) and exit")
    # Set by benchmarks/gpu_check.sh: what its pip commands did, and their output for the log.
    parser.add_argument("--wheels", default="none", choices=("ok", "failed", "none"), help=argparse.SUPPRESS)
    parser.add_argument("--editable", default="not tried", help=argparse.SUPPRESS)
    parser.add_argument("--install-log", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str]) -> int:
    if argv[:1] == [AS_ALRT]:
        as_alrt(argv[1:])
        return 0
    if argv[:1] == [PROBE]:
        probe()
        return 0
    args = parse_args(argv)
    if args.prepare_data is not None:
        return prepare_data_mode(args.prepare_data)
    if args.download_wheels is not None:
        return download_wheels_mode(args.download_wheels)
    return run_check(args)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
