"""What `alrt serve` measures, exposed on `GET /metrics` in Prometheus' text format.

Each app has its own `CollectorRegistry`, never the process-wide default: several servers in one process (the tests
start many) keep separate counts and never register a name twice. Requests are counted by `CountRequests`, an ASGI
middleware that sees every response the app sends (errors, 404s and malformed JSON included), once each, when it is
complete; a request whose client went away first is counted with status 499 (nginx's "client closed request").
Token counters and latency histograms take the stats of every generation whose answer was delivered; queue depth,
busy slots, slots and the model's load time are read from the worker at scrape time.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from alrt_core.inference.session import GenerationStats

if TYPE_CHECKING:
    from serve.worker import ModelWorker

CLIENT_CLOSED = 499  # the status label of a request whose client disconnected before its response was complete
UNMATCHED = "unmatched"  # the endpoint label of a path no route serves (its 404s)
# Seconds, 1 ms to 10 s: a decode step of a small model on a CPU is milliseconds, a long prompt's prefill seconds.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class ServeMetrics:
    """The metrics of one app, in its own registry."""

    def __init__(self, worker: ModelWorker) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("alrt_requests", "HTTP requests answered, by endpoint (route path) and status; "
                                "499: the client disconnected first", ("endpoint", "status"), registry=self.registry)
        self.prompt_tokens = Counter("alrt_prompt_tokens", "Prompt tokens of the generations answered",
                                     registry=self.registry)
        self.generated_tokens = Counter("alrt_generated_tokens", "Tokens generated in the answers delivered",
                                        registry=self.registry)
        self.time_to_first_token = Histogram(
            "alrt_time_to_first_token_seconds", "Time from a generation's start to its first token, the prefill "
            "included", buckets=LATENCY_BUCKETS, registry=self.registry)
        self.time_per_output_token = Histogram(
            "alrt_time_per_output_token_seconds", "Decoding seconds per generated token, one observation per answer",
            buckets=LATENCY_BUCKETS, registry=self.registry)
        readings = {
            "alrt_queue_depth": ("Jobs waiting for a slot", lambda: worker.queued),
            "alrt_busy_slots": ("Jobs decoding now", lambda: worker.busy_slots),
            "alrt_slots": ("Jobs that can decode together", lambda: worker.parallel),
            "alrt_model_load_seconds": ("Seconds the model took to load (0 until loaded)", lambda: worker.load_seconds),
        }
        for name, (documentation, read) in readings.items():
            Gauge(name, documentation, registry=self.registry).set_function(read)

    def observe(self, stats: GenerationStats) -> None:
        """Count one delivered generation."""
        self.prompt_tokens.inc(stats.prompt_tokens)
        self.generated_tokens.inc(stats.new_tokens)
        if stats.new_tokens:  # without a token there is no first-token time, and nothing to divide by
            self.time_to_first_token.observe(stats.time_to_first_token)
            self.time_per_output_token.observe(stats.decode_seconds / stats.new_tokens)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class CountRequests:
    """ASGI middleware counting each HTTP request once in `requests`, by its route's path and its status.

    The count is made just before the last body message is passed on, so a client that has read its answer finds it
    counted on its next scrape. A response that never completes is counted when the app returns: 499 if the client
    disconnected (uvicorn then drops whatever is still sent), else 500 (the app failed mid-response)."""

    def __init__(self, app: ASGIApp, requests: Counter) -> None:
        self.app, self.requests = app, requests

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500  # replaced by the status the app starts its response with
        disconnected = counted = False

        def count(code: int) -> None:
            nonlocal counted
            endpoint = getattr(scope.get("route"), "path", UNMATCHED)  # the template: one label per route, not per id
            self.requests.labels(endpoint=endpoint, status=str(code)).inc()
            counted = True

        async def watched_receive() -> Message:
            nonlocal disconnected
            message = await receive()
            disconnected = disconnected or message["type"] == "http.disconnect"
            return message

        async def watched_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body" and not message.get("more_body", False) and not counted:
                count(CLIENT_CLOSED if disconnected else status)
            await send(message)

        try:
            await self.app(scope, watched_receive, watched_send)
        finally:
            if not counted:
                count(CLIENT_CLOSED if disconnected else 500)
