"""Continuous batching: rows of one cache at different lengths decode together, each as if it ran alone."""

from __future__ import annotations

import pytest
import torch
from model_helpers import ALL_ON, small_decoder

from alrt_core.data.tokenizer import Tokenizer
from alrt_core.inference.batch import BatchedGenerator, BatchRequest
from alrt_core.inference.sampling import SamplingConfig
from alrt_core.inference.session import Generation, Session

GREEDY = SamplingConfig(temperature=0.0)
# Mixed prompt lengths (empty: from BOS alone), budgets, greedy and seeded sampling, a stop string, and a prompt that
# reaches the context's end while decoding (context_full).
REQUESTS = [
    ([5, 6, 7], 20, GREEDY, ()),
    ([9] * 17, 30, SamplingConfig(temperature=0.8, seed=3), ()),
    ([], 12, GREEDY, ()),
    (list(range(10, 50)), 40, SamplingConfig(temperature=1.0, top_k=20, seed=1), ()),
    ([3, 4], 25, GREEDY, ("<stop: set from this request's own text>",)),
    ([7, 8, 9, 10], 9, SamplingConfig(temperature=0.7, seed=11), ()),
]


def run_batched(engine: BatchedGenerator, requests: list[BatchRequest]) -> list[Generation]:
    """Requests join as rows free up (between decode steps), in order; results in request order."""
    results: dict[int, Generation] = {}
    index_of = {id(request): index for index, request in enumerate(requests)}
    pending = list(requests)
    while pending or engine.rows:
        while pending and engine.free:
            request = pending.pop(0)
            done = engine.add(request)
            if done is not None:
                results[index_of[id(request)]] = done
        for request, generation in engine.step():
            results[index_of[id(request)]] = generation
    return [results[index] for index in range(len(requests))]


@pytest.mark.parametrize("changes", [{}, {"ranks": 5}, {**ALL_ON, "num_layers": 4}], ids=["dense", "factored", "all-switches"])
def test_batched_rows_generate_what_each_generates_alone(small_dataset, changes):
    tokenizer = Tokenizer.load(small_dataset.tokenizer_path)
    model = small_decoder(tokenizer, seq_len=64, **changes)
    # The stop string: two characters from the middle of what that request generates without one.
    free_text = Session(model, tokenizer).generate([3, 4], max_new_tokens=25, sampling=GREEDY).text
    cases = [(p, n, s, (free_text[10:12],) if st else ()) for p, n, s, st in REQUESTS]
    alone = [Session(model, tokenizer).generate(p, max_new_tokens=n, sampling=s, stop=st) for p, n, s, st in cases]
    pieces: dict[int, list[str]] = {i: [] for i in range(len(cases))}
    requests = [BatchRequest(p, n, s, st, on_text=pieces[i].append) for i, (p, n, s, st) in enumerate(cases)]
    batched = run_batched(BatchedGenerator(model, tokenizer, slots=3), requests)
    for index, (one, many) in enumerate(zip(alone, batched, strict=True)):
        assert many.token_ids == one.token_ids, index
        assert many.text == one.text == "".join(pieces[index])
        assert many.stats.stop_reason == one.stats.stop_reason
        assert many.stats.new_tokens == len(one.token_ids)
    assert {g.stats.stop_reason for g in batched} == {"max_new_tokens", "context_full", "stop_string"}


def test_a_cancelled_row_leaves_at_once_and_the_others_are_unchanged(small_dataset):
    tokenizer = Tokenizer.load(small_dataset.tokenizer_path)
    model = small_decoder(tokenizer, seq_len=64)
    cancel = {"now": False}
    engine = BatchedGenerator(model, tokenizer, slots=2)
    assert engine.add(BatchRequest([5, 6], 30, GREEDY, should_stop=lambda: cancel["now"])) is None
    assert engine.add(BatchRequest([9, 9, 9], 20, GREEDY)) is None
    assert engine.free == 0
    for _ in range(5):
        assert engine.step() == []
    cancel["now"] = True
    finished = [generation for _, generation in engine.step()]
    assert [g.stats.stop_reason for g in finished] == ["interrupted"] and len(finished[0].token_ids) == 5
    assert engine.free == 1  # its row is free for the next request while the other goes on
    rest: list[Generation] = []
    while engine.rows:
        rest += [generation for _, generation in engine.step()]
    expected = Session(model, tokenizer).generate([9, 9, 9], max_new_tokens=20, sampling=GREEDY)
    assert rest[0].token_ids == expected.token_ids


def test_rows_at_different_lengths_decode_as_each_row_alone(small_dataset):
    """One batched decode step over rows of lengths 3, 11 and 7 gives each row the logits of its own batch-1 step
    (to float rounding: batch size changes the matmul kernels), and never touches another row's cache."""
    tokenizer = Tokenizer.load(small_dataset.tokenizer_path)
    model = small_decoder(tokenizer, seq_len=32, **ALL_ON, num_layers=4)
    prompts = [[5, 6, 7], list(range(20, 31)), [tokenizer.bos_id, 9, 8, 7, tokenizer.bos_id, 4, 3]]
    cache = model.new_cache(batch_size=3)
    with torch.no_grad():
        for row, prompt in enumerate(prompts):
            cache.select([row])
            model(torch.tensor([prompt]), cache=cache)
        keys_before = cache.keys.clone()
        cache.select([2, 0, 1])  # any order: input row i is cache row rows[i]
        batched = model(torch.tensor([[11], [12], [13]]), cache=cache)[:, -1]
        assert cache.lengths == [4, 12, 8]
        for input_row, (row, token) in enumerate(zip([2, 0, 1], [11, 12, 13], strict=True)):
            alone = model.new_cache(batch_size=1)
            model(torch.tensor([prompts[row]]), cache=alone)
            expected = model(torch.tensor([[token]]), cache=alone)[0, -1]
            torch.testing.assert_close(batched[input_row], expected, atol=1e-5, rtol=1e-5)
            length = len(prompts[row])
            # Only the row's own new position was written; its prefix and every other position are as before.
            assert torch.equal(cache.keys[:, row, :, :length], keys_before[:, row, :, :length])
            assert torch.equal(cache.keys[:, row, :, length + 1 :], keys_before[:, row, :, length + 1 :])


def test_selecting_rows_is_checked(small_dataset):
    tokenizer = Tokenizer.load(small_dataset.tokenizer_path)
    cache = small_decoder(tokenizer, seq_len=16).new_cache(batch_size=2)
    for rows in ([], [0, 0], [2]):
        with pytest.raises(ValueError, match="distinct rows of the 2"):
            cache.select(rows)
    cache.select([1])
    cache.advance(3)
    cache.select(None)
    with pytest.raises(ValueError, match=r"different lengths \[0, 3\]"):
        cache.length  # noqa: B018 - the property raises
