"""`alrt serve --parallel N`: concurrent requests decode together and each gets what `alrt generate` gives it
(the server prompts with BOS + the text, as `alrt generate` does)."""

from __future__ import annotations

import threading

from run_helpers import RunningServer

from alrt_core.inference.sampling import SamplingConfig
from alrt_core.inference.session import Session
from export.loader import load_model
from serve.limits import ServeLimits

# (prompt, max_tokens, temperature, seed, stop): mixed lengths, greedy and seeded sampling, a stop string.
REQUESTS = [
    ("ROMEO:", 24, 0.0, None, None),
    ("To be, or not to be, that is the question:", 16, 0.9, 7, None),
    ("KING", 30, 0.0, None, ["e"]),
    ("First Citizen:\nBefore we proceed any further, hear me speak.", 12, 1.0, 3, None),
    ("O", 20, 0.7, 11, None),
    ("JULIET:\nWherefore", 8, 0.0, None, None),
]


def test_concurrent_requests_decode_in_parallel_slots_each_as_alone(serve_checkpoint):
    loaded = load_model(serve_checkpoint)
    expected = []
    for prompt, max_tokens, temperature, seed, stop in REQUESTS:
        generation = Session(loaded.model, loaded.tokenizer).generate(
            [loaded.tokenizer.bos_id, *loaded.tokenizer.encode(prompt)], max_new_tokens=max_tokens,
            sampling=SamplingConfig(temperature=temperature, top_k=0, seed=seed), stop=tuple(stop or ()))  # the API: no top-k
        expected.append(generation.text)
    running = RunningServer(lambda: load_model(serve_checkpoint), ServeLimits(parallel=4, max_queue=8, threads=None))
    try:
        running.wait_until(lambda: running.health().status_code == 200, "the model to load")
        client = running.client()
        texts: dict[int, str] = {}
        start = threading.Barrier(len(REQUESTS))

        def ask(index: int) -> None:
            prompt, max_tokens, temperature, seed, stop = REQUESTS[index]
            start.wait()
            if index % 2:  # half of them streamed
                stream = client.completions.create(model="tiny", prompt=prompt, max_tokens=max_tokens,
                                                   temperature=temperature, seed=seed, stop=stop, stream=True)
                texts[index] = "".join(chunk.choices[0].text for chunk in stream if chunk.choices)
            else:
                texts[index] = client.completions.create(model="tiny", prompt=prompt, max_tokens=max_tokens,
                                                         temperature=temperature, seed=seed, stop=stop).choices[0].text

        threads = [threading.Thread(target=ask, args=(index,)) for index in range(len(REQUESTS))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert [texts.get(index) for index in range(len(REQUESTS))] == expected
        assert running.worker.parallel == 4
        running.wait_until(lambda: running.worker.busy_slots == 0, "the slots to free")
        assert running.worker.queued == 0
        assert running.worker.counts.completed == len(REQUESTS)
    finally:
        running.stop()
