"""The model worker: one thread loads the model, then decodes up to `parallel` jobs at once from a bounded queue.

One thread owns the model and its KV cache. A decode step of a small model costs about as much for 16 rows as for
one (it is per-operator overhead, not arithmetic), so the worker runs continuous batching
(`alrt_core.inference.batch`): waiting jobs join in free rows between decode steps, every running job advances by
one token per step, and a finished or cancelled job leaves at once. A job's tokens never depend on the jobs beside
it: each row has its own positions, cache row, sampler and stop strings. An ONNX decoder (one past length per
batch) runs one job at a time through `Session`.

Jobs come from the event loop and results go back to it: `Job.events` is an asyncio queue that the worker fills
through `loop.call_soon_threadsafe` with `("text", piece)` while decoding (streaming jobs only), then one
`("done", Generation)` or `("error", message)`. Setting `Job.cancelled` (the client went away) skips a queued job
and stops a running one before its next token.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from alrt_core.errors import UserError
from alrt_core.inference.batch import BatchedGenerator, BatchRequest
from alrt_core.inference.decoder import Decoder
from alrt_core.inference.sampling import SamplingConfig
from alrt_core.inference.session import Generation, Session
from alrt_core.model.gpt import GPT
from export.loader import LoadedModel

log = logging.getLogger("alrt.serve")


class QueueFull(Exception):
    """Every queue slot is taken: the request should be retried later (HTTP 429)."""


class NotReady(Exception):
    """The model is still loading, failed to load, or the server is shutting down (HTTP 503)."""


@dataclass
class Job:
    prompt_ids: list[int]
    max_tokens: int
    sampling: SamplingConfig
    stop: tuple[str, ...]
    stream: bool
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue[tuple[str, Any]] = field(default_factory=asyncio.Queue)
    cancelled: threading.Event = field(default_factory=threading.Event)

    def post(self, kind: str, value: Any) -> None:
        """Hand an event to the request's coroutine (from the worker thread)."""
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, (kind, value))
        except RuntimeError:  # the event loop is closed: the server is gone, nobody is listening
            pass


@dataclass
class WorkerCounts:
    completed: int = 0
    cancelled: int = 0
    rejected: int = 0  # refused because the queue was full
    failed: int = 0


class ModelWorker:
    def __init__(self, loader: Callable[[], LoadedModel[Decoder]], max_queue: int, *, parallel: int = 1,
                 threads: int | None = 1, before_job: Callable[[Job], None] | None = None) -> None:
        if max_queue < 1 or parallel < 1:
            raise ValueError("max_queue and parallel must be at least 1")
        self.loader, self.max_queue, self.threads, self.before_job = loader, max_queue, threads, before_job
        self.parallel = parallel  # decoding slots (an ONNX decoder gets one)
        self.state = "loading"  # loading | ready | failed | closed
        self.error = ""
        self.loaded: LoadedModel[Decoder] | None = None
        self.load_seconds = 0.0
        self.counts = WorkerCounts()
        # Called from the worker thread once loading ends either way (the CLI prints, or stops the server).
        self.on_ready: Callable[[ModelWorker], None] | None = None
        self.on_failed: Callable[[ModelWorker], None] | None = None
        self._queue: queue.Queue[Job | None] = queue.Queue(maxsize=max_queue)
        self._lock = threading.Lock()
        self._running: list[Job] = []
        self._thread = threading.Thread(target=self._run, name="alrt-model-worker", daemon=True)

    @property
    def queued(self) -> int:
        """Jobs waiting for a slot (the ones decoding are not counted)."""
        return self._queue.qsize()

    @property
    def busy_slots(self) -> int:
        """Jobs decoding now."""
        with self._lock:
            return len(self._running)

    def start(self) -> None:
        self._thread.start()

    def submit(self, job: Job) -> None:
        with self._lock:
            if self.state != "ready":
                raise NotReady({"loading": "the model is still loading", "closed": "the server is shutting down"}.get(
                    self.state, f"the model failed to load: {self.error}"))
            try:
                self._queue.put_nowait(job)
            except queue.Full:
                self.counts.rejected += 1
                raise QueueFull(f"the server is busy: {self.max_queue} requests are already waiting") from None

    def close(self, timeout: float = 10.0) -> None:
        """Refuse new jobs, fail the waiting ones, stop the running one and wait for the thread."""
        with self._lock:
            if self.state != "failed":  # a failure stays visible to whoever reads the state after shutdown
                self.state = "closed"
            while True:
                try:
                    job = self._queue.get_nowait()
                except queue.Empty:
                    break
                if job is not None:
                    job.cancelled.set()
                    job.post("error", "the server is shutting down")
            for job in self._running:
                job.cancelled.set()
            self._queue.put_nowait(None)  # wakes the thread; there is room, the queue was just emptied
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def _load(self) -> BatchedGenerator | Session | None:
        if self.threads is not None:
            # One decode step of a small model is a few tiny matmuls: extra intra-op threads only add barriers, and
            # while the event loop and other work share the cores a spinning OpenMP team stalls (a busy 2-core
            # machine, `cpu` preset artifact, one client: 121-184 tokens/s with 1 thread, 7-24 with torch's 2).
            torch.set_num_threads(self.threads)
        started = time.perf_counter()
        try:
            loaded = self.loader()
        except Exception as error:  # noqa: BLE001 - any failure is reported on /health and to the CLI
            if not isinstance(error, UserError):  # a user's mistake is reported in one line, by the CLI
                log.exception("loading the model failed")
            with self._lock:
                self.state, self.error = ("failed", str(error) or type(error).__name__)
            if self.on_failed is not None:
                self.on_failed(self)
            return None
        self.loaded, self.load_seconds = loaded, time.perf_counter() - started
        if isinstance(loaded.model, GPT):
            engine: BatchedGenerator | Session = BatchedGenerator(loaded.model, loaded.tokenizer, self.parallel)
        else:
            self.parallel = 1
            engine = Session(loaded.model, loaded.tokenizer)
        with self._lock:
            if self.state == "loading":
                self.state = "ready"
        if self.on_ready is not None:
            self.on_ready(self)
        return engine

    def _run(self) -> None:
        engine = self._load()
        if engine is None:
            return
        if isinstance(engine, Session):
            while (job := self._queue.get()) is not None:
                self._serve_alone(engine, job)
            return
        rows: dict[int, Job] = {}  # id(request) -> its job
        while True:
            # Wait for work only when nothing decodes; otherwise take what is queued and step.
            while engine.free and (not engine.rows or not self._queue.empty()):
                job = self._queue.get()
                if job is None:
                    self._drain(engine, rows)
                    return
                self._admit(engine, rows, job)
            try:
                finished = engine.step()
            except Exception as error:  # noqa: BLE001 - fail the step's jobs, keep the worker
                log.exception("generation failed")
                engine.rows.clear()
                for job in rows.values():
                    self._fail(job, error)
                rows.clear()
                finished = []
            for request, generation in finished:
                self._post_done(rows.pop(id(request)), generation)
            self._set_running(list(rows.values()))

    def _still_wanted(self, job: Job) -> bool:
        """Whether a job just taken from the queue should run (its client may have gone while it waited)."""
        if self.before_job is not None:
            self.before_job(job)  # a test hook: holds the worker here to fill the queue deterministically
        if job.cancelled.is_set():
            self.counts.cancelled += 1
            return False
        return True

    def _admit(self, engine: BatchedGenerator, rows: dict[int, Job], job: Job) -> None:
        if not self._still_wanted(job):
            return
        request = BatchRequest(job.prompt_ids, job.max_tokens, job.sampling, job.stop,
                               on_text=(lambda piece: job.post("text", piece)) if job.stream else None,
                               should_stop=job.cancelled.is_set)
        try:
            done = engine.add(request)
        except Exception as error:  # noqa: BLE001 - one bad request must not take the worker down
            log.exception("generation failed")
            self._fail(job, error)
            return
        if done is not None:
            self._post_done(job, done)
            return
        rows[id(request)] = job
        self._set_running(list(rows.values()))

    def _drain(self, engine: BatchedGenerator, rows: dict[int, Job]) -> None:
        """Shutting down: the running jobs were cancelled by `close`; finish them as interrupted."""
        while engine.rows:
            for request, generation in engine.step():
                self._post_done(rows.pop(id(request)), generation)

    def _set_running(self, jobs: list[Job]) -> None:
        with self._lock:
            self._running = jobs

    def _post_done(self, job: Job, generation: Generation) -> None:
        if generation.stats.stop_reason == "interrupted":
            self.counts.cancelled += 1
        else:
            self.counts.completed += 1
        job.post("done", generation)

    def _fail(self, job: Job, error: Exception) -> None:
        self.counts.failed += 1
        job.post("error", f"generation failed: {error}")

    def _serve_alone(self, session: Session, job: Job) -> None:
        """One job at a time (a decoder without per-row positions)."""
        if not self._still_wanted(job):
            return
        self._set_running([job])
        try:
            session.reset()
            generation: Generation = session.generate(
                job.prompt_ids, max_new_tokens=job.max_tokens, sampling=job.sampling, stop=job.stop,
                on_text=(lambda piece: job.post("text", piece)) if job.stream else None,
                should_stop=job.cancelled.is_set,
            )
        except Exception as error:  # noqa: BLE001 - one bad request must not take the worker down
            log.exception("generation failed")
            self._fail(job, error)
            return
        finally:
            self._set_running([])
        self._post_done(job, generation)
