"""`alrt serve` through the official `openai` client: results equal `Session.generate`, streaming, errors, the
bounded queue (429), loading (503), concurrency, client disconnects, and the CLI end to end."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator

import httpx
import openai
import pytest
from cli_runner import ROOT
from run_helpers import RunningServer, sample_key
from typer.testing import CliRunner

import serve.server
from alrt_cli import serve_cmd
from alrt_cli.app import app as cli_app
from alrt_core.errors import UserError
from alrt_core.inference.sampling import SamplingConfig
from alrt_core.inference.session import Generation, Session
from export.artifact import write_artifact
from export.loader import LoadedModel, load_model
from export.quantize import QuantizeOptions, quantize_checkpoint
from serve.chat import ChatTemplate
from serve.limits import ServeLimits
from serve.worker import Job

GREEDY = SamplingConfig(temperature=0.0)
# llama-server's names, in its order (its `cache_n`, prompt tokens reused from a cache, does not apply: none is kept).
TIMINGS = ["prompt_n", "prompt_ms", "prompt_per_token_ms", "prompt_per_second", "predicted_n", "predicted_ms",
           "predicted_per_token_ms", "predicted_per_second"]
PROMPTS = ["KING.\nWhat news", "Thou art", "O, ", "MACBETH.\n"]


@pytest.fixture(scope="module")
def reference(serve_checkpoint) -> LoadedModel:
    return load_model(serve_checkpoint)


def expected(loaded: LoadedModel, prompt_ids: list[int], max_tokens: int, stop: tuple[str, ...] = ()) -> Generation:
    return Session(loaded.model, loaded.tokenizer).generate(prompt_ids, max_new_tokens=max_tokens, sampling=GREEDY,
                                                             stop=stop)


def expected_text(loaded: LoadedModel, prompt_ids: list[int], max_tokens: int) -> str:
    return expected(loaded, prompt_ids, max_tokens).text


def prompt_ids(loaded: LoadedModel, text: str) -> list[int]:
    return [loaded.tokenizer.bos_id, *loaded.tokenizer.encode(text)]


@pytest.fixture(scope="module")
def server(serve_checkpoint) -> Iterator[RunningServer]:
    running = RunningServer(lambda: load_model(serve_checkpoint),
                            ServeLimits(max_queue=8, max_tokens_cap=64, threads=None))
    running.wait_until(lambda: running.health().status_code == 200, "the model to load")
    yield running
    running.stop()


def test_greedy_completion_equals_session_generate(server, reference):
    client = server.client()
    result = client.completions.create(model="tiny", prompt=PROMPTS[0], max_tokens=24, temperature=0)
    ids = prompt_ids(reference, PROMPTS[0])
    assert result.choices[0].text == expected_text(reference, ids, 24)
    assert result.object == "text_completion" and result.model == "tiny" and result.id.startswith("cmpl-")
    assert (result.usage.prompt_tokens, result.usage.completion_tokens) == (len(ids), 24)
    assert result.usage.total_tokens == len(ids) + 24 and result.choices[0].finish_reason == "length"
    default = client.completions.create(model="tiny", prompt=PROMPTS[0], temperature=0)
    assert default.usage.completion_tokens == 16  # OpenAI's default max_tokens for completions
    # A stop string ends the text before it (never including any of it) with finish_reason "stop".
    stop = result.choices[0].text[6:9]
    stopped = client.completions.create(model="tiny", prompt=PROMPTS[0], max_tokens=24, temperature=0, stop=[stop])
    assert stopped.choices[0].finish_reason == "stop"
    assert stopped.choices[0].text == result.choices[0].text[: result.choices[0].text.index(stop)]


def test_seeded_sampling_is_reproducible_and_extensions_apply(server):
    client = server.client()

    def sample(seed: int, **extra) -> str:
        return client.completions.create(model="tiny", prompt="Thou", max_tokens=20, temperature=1.0, top_p=0.9,
                                         seed=seed, **extra).choices[0].text

    assert sample(3) == sample(3) and sample(3) != sample(4)
    # top_k=1 is greedy whatever the temperature: the extension reaches the sampler.
    greedy = client.completions.create(model="tiny", prompt="Thou", max_tokens=20, temperature=0).choices[0].text
    assert sample(5, extra_body={"top_k": 1}) == greedy


def test_chat_completion_renders_the_template_and_stops_at_turn_end(server, reference):
    client = server.client()
    messages = [{"role": "system", "content": "A scene at court."}, {"role": "user", "content": "Who goes there?"},
                {"role": "assistant", "content": "A friend."}, {"role": "user", "content": "Speak, then."}]
    result = client.chat.completions.create(model="tiny", messages=messages, max_tokens=40, temperature=0)
    document = "A scene at court.\n\nYOU.\nWho goes there?\n\nHAMLET.\nA friend.\n\nYOU.\nSpeak, then.\n\nHAMLET.\n"
    assert ChatTemplate().render([(m["role"], m["content"]) for m in messages]) == document
    ids = prompt_ids(reference, document)
    reply = expected(reference, ids, 40, stop=("\n\n",))
    choice = result.choices[0]
    assert choice.message.role == "assistant" and choice.message.content == reply.text and "\n\n" not in reply.text
    assert result.object == "chat.completion" and result.usage.prompt_tokens == len(ids)
    assert result.usage.completion_tokens == len(reply.token_ids)
    assert choice.finish_reason == {"stop_string": "stop", "eos": "stop", "max_new_tokens": "length"}[reply.stats.stop_reason]
    capped = client.chat.completions.create(model="tiny", messages=messages, max_completion_tokens=3, temperature=0)
    assert capped.choices[0].message.content == expected(reference, ids, 3, stop=("\n\n",)).text


def test_streaming_concatenates_to_the_greedy_text_and_ends_with_usage(server, reference):
    client = server.client()
    plain = client.completions.create(model="tiny", prompt=PROMPTS[1], max_tokens=30, temperature=0)
    chunks = list(client.completions.create(model="tiny", prompt=PROMPTS[1], max_tokens=30, temperature=0, stream=True,
                                            stream_options={"include_usage": True}))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == plain.choices[0].text
    assert len([c for c in chunks if c.choices]) > 2  # it really streamed
    assert chunks[-2].choices[0].finish_reason == "length" and chunks[-1].choices == []
    assert chunks[-1].usage.completion_tokens == 30 and chunks[-1].usage.prompt_tokens == plain.usage.prompt_tokens
    assert all(c.usage is None for c in chunks[:-1])
    messages = [{"role": "user", "content": "Good morrow."}]
    whole = client.chat.completions.create(model="tiny", messages=messages, max_tokens=30, temperature=0)
    parts = list(client.chat.completions.create(model="tiny", messages=messages, max_tokens=30, temperature=0,
                                                stream=True))
    assert parts[0].choices[0].delta.role == "assistant" and parts[0].object == "chat.completion.chunk"
    assert "".join(p.choices[0].delta.content or "" for p in parts) == whole.choices[0].message.content
    assert parts[-1].choices[0].finish_reason == whole.choices[0].finish_reason
    raw = httpx.post(f"{server.url}/v1/completions", json={"model": "tiny", "prompt": "O", "max_tokens": 2,
                                                           "stream": True}, timeout=10)
    assert raw.headers["content-type"].startswith("text/event-stream") and raw.text.endswith("data: [DONE]\n\n")


def test_answers_and_the_last_streamed_chunk_carry_llama_server_timings(server):
    client = server.client()
    messages = [{"role": "user", "content": "Good morrow."}]
    plain = client.completions.create(model="tiny", prompt=PROMPTS[3], max_tokens=10, temperature=0)
    chat = client.chat.completions.create(model="tiny", messages=messages, max_tokens=10, temperature=0)
    for answer in (plain, chat):
        assert_timings(answer.timings, answer.usage.prompt_tokens, answer.usage.completion_tokens)
    for chunks in (list(client.completions.create(model="tiny", prompt=PROMPTS[3], max_tokens=10, temperature=0,
                                                  stream=True, stream_options={"include_usage": True})),
                   list(client.chat.completions.create(model="tiny", messages=messages, max_tokens=10, temperature=0,
                                                       stream=True, stream_options={"include_usage": True}))):
        with_timings = [chunk for chunk in chunks if "timings" in (chunk.model_extra or {})]
        assert len(with_timings) == 1 and with_timings[0] is chunks[-2] and chunks[-2].choices[0].finish_reason
        assert_timings(chunks[-2].timings, chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens)


def assert_timings(timings: dict[str, float], prompt_tokens: int, completion_tokens: int) -> None:
    assert list(timings) == TIMINGS
    assert (timings["prompt_n"], timings["predicted_n"]) == (prompt_tokens, completion_tokens)
    for part, count in (("prompt", prompt_tokens), ("predicted", completion_tokens)):
        milliseconds = timings[f"{part}_ms"]
        assert 0 < milliseconds < 30_000
        assert timings[f"{part}_per_token_ms"] == pytest.approx(milliseconds / count)
        assert timings[f"{part}_per_second"] == pytest.approx(1000 * count / milliseconds)


@pytest.mark.parametrize(
    ("body", "param", "needle"),
    [
        ({"model": "tiny", "prompt": "x", "temperature": -0.5}, "temperature", "greater than or equal to 0"),
        ({"model": "tiny", "prompt": "x", "top_p": 0}, "top_p", "greater than 0"),
        ({"model": "tiny", "prompt": "x", "top_p": 1.5}, "top_p", "less than or equal to 1"),
        ({"model": "tiny", "prompt": "x", "n": 2}, "n", "only n=1"),
        ({"model": "tiny", "prompt": "x", "max_tokens": 65}, "max_tokens", "at most 64"),
        ({"model": "tiny", "prompt": "x", "max_tokens": 0}, "max_tokens", "greater than or equal to 1"),
        ({"model": "tiny", "prompt": "x " * 200}, "prompt", "at most 128"),
        ({"model": "tiny", "prompt": ["a", "b"]}, "prompt", "exactly one prompt"),
        ({"model": "tiny", "prompt": [1, 99999]}, "prompt", "token ids must be in"),
        ({"model": "tiny", "prompt": "x", "stop": ["a", ""]}, "stop", "must not be empty"),
        ({"model": "tiny", "prompt": "x", "frobnicate": 1}, "frobnicate", "Unrecognized request argument"),
        ({"model": "tiny"}, "prompt", "missing required parameter"),
        ({"model": "tiny", "prompt": "x", "stream_options": {"include_usage": True}}, None, "only allowed when stream"),
    ],
)
def test_bad_completion_requests_are_400_with_openai_errors(server, body, param, needle):
    client = server.client()
    with pytest.raises(openai.BadRequestError) as caught:
        client.post("/completions", body=body, cast_to=object)  # the raw body, as a misbehaving client sends it
    error = caught.value.body
    assert caught.value.status_code == 400 and error["type"] == "invalid_request_error"
    assert error["param"] == param and needle in error["message"]


def test_any_model_name_is_answered_with_the_servers_id(server, reference):
    client = server.client()
    ids = prompt_ids(reference, PROMPTS[1])
    plain = client.completions.create(model="gpt-4o-mini", prompt=PROMPTS[1], max_tokens=12, temperature=0)
    assert plain.model == "tiny" and plain.choices[0].text == expected_text(reference, ids, 12)
    messages = [{"role": "user", "content": "Good morrow."}]
    chat = client.chat.completions.create(model="llama3", messages=messages, max_tokens=8, temperature=0)
    assert chat.model == "tiny" and chat.choices[0].message.content == client.chat.completions.create(
        model="tiny", messages=messages, max_tokens=8, temperature=0).choices[0].message.content
    chunks = list(client.chat.completions.create(model="", messages=messages, max_tokens=4, temperature=0, stream=True))
    assert chunks and {chunk.model for chunk in chunks} == {"tiny"}


def test_strict_model_refuses_other_names_with_an_openai_error(serve_checkpoint, reference):
    running = RunningServer(lambda: load_model(serve_checkpoint), strict_model=True)
    try:
        running.wait_until(lambda: running.health().status_code == 200, "the model to load")
        client = running.client()
        for request in (lambda: client.completions.create(model="nope", prompt="x", max_tokens=2),
                        lambda: client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])):
            with pytest.raises(openai.BadRequestError) as caught:
                request()
            assert caught.value.status_code == 400
            assert caught.value.body == {"message": "the model 'nope' does not exist; this server serves 'tiny'",
                                         "type": "invalid_request_error", "param": "model", "code": "model_not_found"}
        served = client.completions.create(model="tiny", prompt=PROMPTS[2], max_tokens=6, temperature=0)
        assert served.model == "tiny" and served.choices[0].text == expected_text(reference, prompt_ids(reference, PROMPTS[2]), 6)
    finally:
        running.stop()


def test_bad_chat_requests_and_raw_http_errors(server):
    client = server.client()
    cases = [
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "tool", "content": "x"}]}, "messages.0.role"),
        ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
         "messages.0.content"),
        ({"messages": [{"role": "user", "content": "x"}], "max_completion_tokens": 500}, "max_completion_tokens"),
        ({"messages": [{"role": "user", "content": "x"}], "logprobs": True}, None),
    ]
    for extra, param in cases:
        with pytest.raises(openai.BadRequestError) as caught:
            client.chat.completions.create(model="tiny", **extra)
        assert caught.value.body["param"] == param, extra
    not_json = httpx.post(f"{server.url}/v1/completions", content=b"{nope", headers={"content-type": "application/json"})
    assert not_json.status_code == 400
    assert not_json.json()["error"] == {"message": "the request body is not valid JSON", "type": "invalid_request_error",
                                        "param": None, "code": "invalid_json"}
    missing = httpx.get(f"{server.url}/v1/nothing-here")
    assert missing.status_code == 404 and missing.json()["error"]["type"] == "not_found_error"


def test_models_and_health(server):
    client = server.client()
    assert [model.id for model in client.models.list()] == ["tiny"]
    assert client.models.retrieve("tiny").owned_by == "alrt"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("other")
    health = server.health().json()
    assert health["status"] == "ok" and health["kind"] == "checkpoint" and health["context"] == 128


def test_metrics_count_requests_by_status_tokens_and_latencies(server):
    client = server.client()
    before = server.metrics()  # a scrape: counted itself, on the next one
    plain = client.completions.create(model="tiny", prompt=PROMPTS[2], max_tokens=5, temperature=0)
    chunks = list(client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "Hail."}],
                                                 max_tokens=5, temperature=0, stream=True,
                                                 stream_options={"include_usage": True}))
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model="tiny", prompt="x", max_tokens=65)
    assert httpx.post(f"{server.url}/v1/completions", content=b"{nope",
                      headers={"content-type": "application/json"}).status_code == 400
    assert httpx.get(f"{server.url}/v1/nothing-here").status_code == 404
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("other")
    after = server.metrics()
    counted = {key: after[key] - before.get(key, 0) for key in after if key.startswith("alrt_requests_total{")}
    assert {key: n for key, n in counted.items() if n} == {
        sample_key("alrt_requests_total", {"endpoint": endpoint, "status": status}): n
        for endpoint, status, n in [("/metrics", "200", 1), ("/v1/completions", "200", 1), ("/v1/completions", "400", 2),
                                    ("/v1/chat/completions", "200", 1), ("unmatched", "404", 1),
                                    ("/v1/models/{model_id}", "404", 1)]}

    def grew(name: str) -> float:
        return after[name] - before.get(name, 0)

    usages = [plain.usage, chunks[-1].usage]
    assert grew("alrt_prompt_tokens_total") == sum(usage.prompt_tokens for usage in usages)
    assert grew("alrt_generated_tokens_total") == sum(usage.completion_tokens for usage in usages)
    for histogram in ("alrt_time_to_first_token_seconds", "alrt_time_per_output_token_seconds"):
        assert grew(f"{histogram}_count") == 2 and grew(f"{histogram}_sum") > 0
        assert after[sample_key(f"{histogram}_bucket", {"le": "+Inf"})] == after[f"{histogram}_count"]
    assert (after["alrt_queue_depth"], after["alrt_busy_slots"]) == (0, 0)
    assert after["alrt_slots"] >= 1 and after["alrt_model_load_seconds"] > 0


def test_concurrent_requests_all_get_their_own_answer(server, reference):
    client = server.client()
    answers: dict[str, str] = {}

    def ask(prompt: str) -> None:
        answers[prompt] = client.completions.create(model="tiny", prompt=prompt, max_tokens=20, temperature=0).choices[0].text

    threads = [threading.Thread(target=ask, args=(prompt,)) for prompt in PROMPTS]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert answers == {prompt: expected_text(reference, prompt_ids(reference, prompt), 20) for prompt in PROMPTS}


class Gate:
    """Holds the worker before each job until a pass is given (or the gate opened), recording the jobs it held."""

    def __init__(self) -> None:
        self.condition = threading.Condition()
        self.jobs: list[Job] = []
        self.passes, self.opened = 0, False

    def __call__(self, job: Job) -> None:
        with self.condition:
            self.jobs.append(job)
            self.condition.notify_all()
            assert self.condition.wait_for(lambda: self.opened or self.passes > 0, 30)
            self.passes -= 0 if self.opened else 1

    def wait_held(self, count: int) -> bool:
        with self.condition:
            return self.condition.wait_for(lambda: len(self.jobs) >= count, 20)

    def let_one_pass(self) -> None:
        with self.condition:
            self.passes += 1
            self.condition.notify_all()

    def open(self) -> None:
        with self.condition:
            self.opened = True
            self.condition.notify_all()


def test_full_queue_answers_429_and_the_waiting_requests_still_complete(serve_checkpoint, reference):
    gate = Gate()
    running = RunningServer(lambda: load_model(serve_checkpoint), ServeLimits(max_queue=1, threads=None),
                            before_job=gate)
    try:
        running.wait_until(lambda: running.health().status_code == 200, "the model to load")
        client = running.client()
        answers: list[str] = []

        def ask() -> None:
            answers.append(client.completions.create(model="tiny", prompt="O, ", max_tokens=8, temperature=0).choices[0].text)

        first = threading.Thread(target=ask)
        first.start()
        assert gate.wait_held(1)  # the worker holds the first request
        second = threading.Thread(target=ask)
        second.start()
        running.wait_until(lambda: running.worker.queued == 1, "the second request to be queued")
        with pytest.raises(openai.RateLimitError) as caught:
            client.completions.create(model="tiny", prompt="O, ", max_tokens=8)
        assert caught.value.status_code == 429
        assert caught.value.body["type"] == "rate_limit_error" and caught.value.body["code"] == "queue_full"
        gate.open()
        first.join(30)
        second.join(30)
        assert answers == [expected_text(reference, prompt_ids(reference, "O, "), 8)] * 2
        counts = running.health().json()
        assert (counts["completed"], counts["rejected"], counts["queued"]) == (2, 1, 0)
    finally:
        gate.open()
        running.stop()


def test_a_client_that_disconnects_cancels_its_generation(serve_checkpoint):
    gate = Gate()
    running = RunningServer(lambda: load_model(serve_checkpoint), ServeLimits(max_tokens_cap=64, threads=None),
                            before_job=gate)
    try:
        running.wait_until(lambda: running.health().status_code == 200, "the model to load")
        port = int(running.url.rsplit(":", 1)[1])
        for held, stream in enumerate((True, False), start=1):
            body = json.dumps({"model": "tiny", "prompt": "O", "max_tokens": 64, "stream": stream}).encode()
            with socket.create_connection(("127.0.0.1", port)) as connection:
                connection.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                                   b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
                assert gate.wait_held(held)
            assert gate.jobs[-1].cancelled.wait(20)  # the server noticed the closed connection
            gate.let_one_pass()
        running.wait_until(lambda: running.health().json()["cancelled"] == 2, "both jobs to be dropped")
        assert running.health().json()["completed"] == 0
        closed = sample_key("alrt_requests_total", {"endpoint": "/v1/completions", "status": "499"})
        running.wait_until(lambda: running.metrics().get(closed) == 2, "both requests to be counted as 499")
        completions = [key for key in running.metrics() if key.startswith('alrt_requests_total{endpoint="/v1/completions"')]
        assert completions == [closed]
    finally:
        gate.open()
        running.stop()


def test_health_is_503_while_loading_then_200(serve_checkpoint):
    loading = threading.Event()
    running = RunningServer(lambda: (loading.wait(30), load_model(serve_checkpoint))[1])
    try:
        running.wait_until(lambda: running.thread.is_alive() and _answers(running), "the socket")
        pending = running.health()
        assert (pending.status_code, pending.json()) == (503, {"status": "loading"})
        with pytest.raises(openai.InternalServerError) as caught:
            running.client().completions.create(model="tiny", prompt="x")
        assert caught.value.status_code == 503 and caught.value.body["code"] == "model_loading"
        while_loading = running.metrics()  # /metrics answers while loading, and counts the 503s
        assert while_loading[sample_key("alrt_requests_total", {"endpoint": "/v1/completions", "status": "503"})] == 1
        assert while_loading[sample_key("alrt_requests_total", {"endpoint": "/health", "status": "503"})] >= 1
        assert while_loading["alrt_model_load_seconds"] == 0
        loading.set()
        running.wait_until(lambda: running.health().status_code == 200, "the model to load")
        assert running.health().json()["status"] == "ok"
        assert running.metrics()["alrt_model_load_seconds"] > 0
    finally:
        loading.set()
        running.stop()


def test_a_model_that_fails_to_load_is_reported_on_health(serve_checkpoint):
    def broken() -> LoadedModel:
        raise UserError("model.alrt: truncated artifact (5 of 9 bytes)")

    running = RunningServer(broken)
    try:
        running.wait_until(lambda: _answers(running) and running.health().json()["status"] == "failed", "the failure")
        assert running.health().status_code == 503
        assert running.health().json()["error"] == "model.alrt: truncated artifact (5 of 9 bytes)"
        with pytest.raises(openai.InternalServerError) as caught:
            running.client().completions.create(model="tiny", prompt="x")
        assert caught.value.body["code"] == "model_failed" and "truncated artifact" in caught.value.body["message"]
    finally:
        running.stop()
    assert running.worker.state == "failed"  # shutting down keeps the failure for the CLI to report


def _answers(running: RunningServer) -> bool:
    try:
        running.health()
    except httpx.TransportError:
        return False
    return True


def test_cli_serves_an_artifact_and_refuses_bad_paths(serve_checkpoint, tmp_path, reference):
    # Refused before the port is bound (the CLI prints a UserError as one line and exits 2).
    with pytest.raises(UserError, match="no such model file: .*missing.alrt"):
        serve_cmd.serve(tmp_path / "missing.alrt", port=0)
    (tmp_path / "junk.bin").write_bytes(b"not a model")
    with pytest.raises(UserError, match="neither a .alrt artifact, a training checkpoint nor an .onnx export"):
        serve_cmd.serve(tmp_path / "junk.bin", port=0)
    with pytest.raises(UserError, match="--max-queue must be at least 1"):
        serve_cmd.serve(serve_checkpoint, port=0, max_queue=0)
    artifact = tmp_path / "model.alrt"
    write_artifact(artifact, quantize_checkpoint(serve_checkpoint, QuantizeOptions(calib_tokens=2048, small_max=0)).data)
    process = subprocess.Popen([sys.executable, "-m", "alrt_cli", "serve", str(artifact), "--port", "0"],
                               stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        line = process.stderr.readline()
        assert "alrt serve: http://127.0.0.1:" in line and "'model'" in line
        url = line.split()[2]
        later = ""
        for _ in range(10):  # other libraries may warn before "ready"
            later = process.stderr.readline()
            if later.startswith("ready") or not later:
                break
        assert later.startswith("ready: artifact, context 128 tokens"), later
        client = openai.OpenAI(base_url=url, api_key="x", max_retries=0)
        text = client.completions.create(model="model", prompt="Thou art", max_tokens=12, temperature=0).choices[0].text
        loaded = load_model(artifact)
        assert text == expected_text(loaded, prompt_ids(loaded, "Thou art"), 12)
    finally:
        process.terminate()
        process.wait(20)


def test_cli_strict_model_flag_reaches_the_server(serve_checkpoint, monkeypatch):
    made: list[dict] = []
    real_create_app = serve.server.create_app

    def recording_create_app(loader, **kwargs):  # noqa: ANN001, ANN003, ANN202 - create_app's own signature
        made.append(kwargs)
        return real_create_app(loader, **kwargs)

    # Parse the flags and build the app, but serve nothing (the port is bound and closed again).
    monkeypatch.setattr(serve.server, "create_app", recording_create_app)
    monkeypatch.setattr(serve.server, "run_server", lambda app, sock, access_log=False: sock.close())
    for flags in ([], ["--strict-model"]):
        result = CliRunner().invoke(cli_app, ["serve", str(serve_checkpoint), "--port", "0", *flags], catch_exceptions=False)
        assert result.exit_code == 0, result.output
    assert [(kwargs["model_name"], kwargs["strict_model"]) for kwargs in made] == [("last", False), ("last", True)]
