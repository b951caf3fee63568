"""`alrt serve` under load and faults, on loopback: 100 concurrent requests mixing streaming and plain completions and
chat completions, malformed JSON, over-long prompts and clients that disconnect mid-stream. Every well-formed request
gets a complete answer or a 429 with OpenAI's error object, every bad one a 400, nothing hangs, the server answers
afterwards, and `/metrics` counts exactly what was sent, by endpoint and status."""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from run_helpers import RunningServer, sample_key

from export.loader import load_model
from serve.limits import ServeLimits

CONCURRENT = 100
SLOTS = 4  # decoding together: cancellations and answers interleave inside one batch
# Ten of each in every hundred, interleaved so that every kind meets a busy server and a full queue.
KINDS = ("completion", "completion", "completion_stream", "completion_stream", "chat", "chat_stream", "malformed_json",
         "prompt_too_long", "disconnect_after_headers", "disconnect_after_first_token")
ENDPOINTS = {"completion": "/v1/completions", "chat": "/v1/chat/completions"}
MAX_TOKENS = 6  # the answers: a few decode steps each keep the whole test to seconds
CAP = 100  # what a disconnecting client asks for: it is gone long before that many tokens are generated
PROMPT = "KING.\nWhat news"
MESSAGES = [{"role": "user", "content": "Who goes there?"}]
ERROR_KEYS = {"message", "type", "param", "code"}
DEADLINE_S = 60  # the whole burst; a hung request fails the test here instead of hanging it


@dataclass
class Outcome:
    """What one client saw: the HTTP status, and its answer's text and usage or its error object."""

    kind: str
    endpoint: str
    status: int
    text: str = ""
    usage: dict[str, int] = field(default_factory=dict)
    error: dict[str, Any] = field(default_factory=dict)
    disconnected: bool = False  # the client closed the connection before the response ended

    @property
    def counted_status(self) -> int:
        return 499 if self.disconnected else self.status  # how the server labels a request whose client went away


@pytest.fixture(scope="module")
def server(serve_checkpoint) -> Iterator[RunningServer]:
    limits = ServeLimits(parallel=SLOTS, max_queue=32, max_tokens_cap=CAP, threads=None)
    running = RunningServer(lambda: load_model(serve_checkpoint), limits)
    running.wait_until(lambda: running.health().status_code == 200, "the model to load")
    yield running
    running.stop()


def body(kind: str, index: int) -> dict[str, Any]:
    chat = kind.startswith("chat") or (kind == "prompt_too_long" and index % 20 >= 10)
    request: dict[str, Any] = {"model": "tiny", "temperature": 0}
    if kind == "prompt_too_long":
        long = "Thou art " * 100  # beyond the 128-token context
        return {**request, **({"messages": [{"role": "user", "content": long}]} if chat else {"prompt": long})}
    request.update({"messages": MESSAGES} if chat else {"prompt": PROMPT})
    request["max_tokens"] = CAP if kind.startswith("disconnect") else MAX_TOKENS
    if kind.endswith("stream") or kind.startswith("disconnect"):
        request.update(stream=True, stream_options={"include_usage": True})
    return request


def endpoint_of(kind: str, index: int) -> str:
    if kind == "malformed_json":
        return ENDPOINTS["chat" if index % 20 >= 10 else "completion"]
    return ENDPOINTS["chat" if "messages" in body(kind, index) else "completion"]


async def send(client: httpx.AsyncClient, url: str, index: int) -> Outcome:
    kind = KINDS[index % len(KINDS)]
    endpoint = endpoint_of(kind, index)
    if kind == "malformed_json":
        content = b'{"model": "tiny", "prompt": "O", "max_tokens": 4'  # cut off mid-object
        response = await client.post(url + endpoint, content=content, headers={"content-type": "application/json"})
        return Outcome(kind, endpoint, response.status_code, error=error_of(response.json()))
    request = body(kind, index)
    if not request.get("stream"):
        response = await client.post(url + endpoint, json=request)
        answer = response.json()
        if response.status_code != 200:
            return Outcome(kind, endpoint, response.status_code, error=error_of(answer))
        return complete_answer(kind, endpoint, answer)
    async with client.stream("POST", url + endpoint, json=request) as response:
        if response.status_code != 200:
            return Outcome(kind, endpoint, response.status_code, error=error_of(json.loads(await response.aread())))
        if kind == "disconnect_after_headers":
            return Outcome(kind, endpoint, 200, disconnected=True)  # leaving the block closes the connection
        events: list[Any] = []
        async for line in response.aiter_lines():
            if not line.startswith("data: "):
                continue
            events.append(line.removeprefix("data: "))
            if kind == "disconnect_after_first_token" and any(token_text(json.loads(event)) for event in events):
                return Outcome(kind, endpoint, 200, disconnected=True)
    return complete_stream(kind, endpoint, events)


def error_of(answer: dict[str, Any]) -> dict[str, Any]:
    """OpenAI's error object, checked for its shape."""
    assert set(answer) == {"error"} and set(answer["error"]) == ERROR_KEYS, answer
    return answer["error"]


def token_text(chunk: dict[str, Any]) -> str:
    choice = chunk["choices"][0] if chunk["choices"] else {}
    return choice.get("text") or choice.get("delta", {}).get("content") or ""


def complete_answer(kind: str, endpoint: str, answer: dict[str, Any]) -> Outcome:
    choice = answer["choices"][0]
    assert choice["finish_reason"] in ("stop", "length"), answer
    assert answer["timings"]["predicted_n"] == answer["usage"]["completion_tokens"], answer
    text = choice["message"]["content"] if kind == "chat" else choice["text"]
    return Outcome(kind, endpoint, 200, text, answer["usage"])


def complete_stream(kind: str, endpoint: str, events: list[str]) -> Outcome:
    assert events and events[-1] == "[DONE]", events
    chunks = [json.loads(event) for event in events[:-1]]
    *pieces, final, last = chunks  # the finish_reason chunk, then the usage chunk without choices
    assert final["choices"][0]["finish_reason"] in ("stop", "length") and last["choices"] == [], chunks
    assert all(chunk["choices"][0]["finish_reason"] is None for chunk in pieces), chunks
    assert final["timings"]["predicted_n"] == last["usage"]["completion_tokens"], chunks
    return Outcome(kind, endpoint, 200, "".join(token_text(chunk) for chunk in pieces), last["usage"])


async def burst(url: str) -> list[Outcome]:
    limits = httpx.Limits(max_connections=2 * CONCURRENT, max_keepalive_connections=CONCURRENT)
    async with httpx.AsyncClient(timeout=30, limits=limits) as client:
        requests = [send(client, url, index) for index in range(CONCURRENT)]
        return await asyncio.wait_for(asyncio.gather(*requests), DEADLINE_S)


def test_a_hundred_concurrent_requests_and_faults_are_all_answered_and_counted(server):
    before = server.metrics()
    outcomes = asyncio.run(burst(server.url))

    assert len(outcomes) == CONCURRENT
    for outcome in outcomes:
        if outcome.kind == "malformed_json":
            assert (outcome.status, outcome.error["code"]) == (400, "invalid_json"), outcome
        elif outcome.kind == "prompt_too_long":
            assert (outcome.status, outcome.error["code"]) == (400, "context_length_exceeded"), outcome
        elif outcome.status == 429:
            assert (outcome.error["type"], outcome.error["code"]) == ("rate_limit_error", "queue_full"), outcome
        else:
            assert outcome.status == 200, outcome
    # Greedy, and every job starts from an empty cache: the same request got the same text whatever ran beside it.
    for endpoint in ENDPOINTS.values():
        texts = {o.text for o in outcomes if o.endpoint == endpoint and o.status == 200 and not o.disconnected}
        assert len(texts) <= 1, texts
    answered = [o for o in outcomes if o.status == 200 and not o.disconnected]
    assert answered, Counter(o.status for o in outcomes)

    # The server is still up, and answers as before.
    after_load = httpx.post(f"{server.url}/v1/completions", json=body("completion", 0), timeout=30)
    assert after_load.status_code == 200
    follow_up = complete_answer("completion", "/v1/completions", after_load.json())
    assert all(o.text == follow_up.text for o in answered if o.endpoint == "/v1/completions")

    # The disconnects reach the counters once the server has noticed them: wait for the totals, then compare.
    sent = Counter((o.endpoint, str(o.counted_status)) for o in [*outcomes, follow_up])

    def counted() -> Counter[tuple[str, str]]:
        metrics = server.metrics()
        return Counter({(endpoint, status): metrics.get(key(endpoint, status), 0) - before.get(key(endpoint, status), 0)
                        for endpoint in ENDPOINTS.values() for status in ("200", "400", "429", "499", "500")})

    deadline = time.monotonic() + 20
    while counted() != sent and time.monotonic() < deadline:
        time.sleep(0.05)
    assert counted() == sent
    metrics = server.metrics()
    assert sum(n for (_, status), n in sent.items() if status == "499") == sum(o.disconnected for o in outcomes)
    delivered = [*answered, follow_up]
    for name, usage_key in (("alrt_generated_tokens_total", "completion_tokens"), ("alrt_prompt_tokens_total",
                                                                                  "prompt_tokens")):
        assert metrics[name] - before.get(name, 0) == sum(o.usage[usage_key] for o in delivered), name
    for histogram in ("alrt_time_to_first_token_seconds", "alrt_time_per_output_token_seconds"):
        observed = metrics[f"{histogram}_count"] - before.get(f"{histogram}_count", 0)
        assert observed == sum(o.usage["completion_tokens"] > 0 for o in delivered), histogram
    assert metrics["alrt_slots"] == SLOTS
    server.wait_until(lambda: server.metrics()["alrt_busy_slots"] == 0, "the cancelled generations to stop")
    assert server.metrics()["alrt_queue_depth"] == 0 and server.health().json()["queued"] == 0


def key(endpoint: str, status: str) -> str:
    return sample_key("alrt_requests_total", {"endpoint": endpoint, "status": status})
