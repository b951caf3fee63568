"""Calibration Hessians: the blocked Gram matrix equals the plain product, and a calibration forward stops at the
head's input — every projection's and the head's H are what hooks on a full forward see."""

from __future__ import annotations

import numpy as np
import torch

from alrt_core.config import ModelConfig
from alrt_core.model.gpt import GPT
from export.calibration import GRAM_BLOCK, HEAD_INPUT, TokenWindows, collect_hessians, gram


def test_the_blocked_gram_matrix_is_the_plain_product_and_exactly_symmetric():
    generator = torch.Generator().manual_seed(0)
    for width in (4 * GRAM_BLOCK, 4 * GRAM_BLOCK + 77):
        flat = torch.randn(300, width, generator=generator, dtype=torch.float64)
        blocked = gram(flat)
        assert blocked.shape == (width, width) and torch.equal(blocked, blocked.T)
        torch.testing.assert_close(blocked, flat.T @ flat, rtol=1e-12, atol=1e-10)
    narrow = torch.randn(50, 4 * GRAM_BLOCK - 1, generator=generator)
    assert torch.equal(gram(narrow), narrow.T @ narrow)  # narrow inputs: one product, as before


def test_calibration_sees_what_a_full_forward_sees_without_running_the_head(monkeypatch):
    config = ModelConfig(vocab_size=64, num_layers=2, model_dim=32, num_heads=2, num_kv_heads=1, seq_len=16)
    model = GPT(config).eval()
    stream = np.random.default_rng(0).integers(0, 64, 200).astype(np.int64)
    head_calls = []
    project = model.output_head._project
    monkeypatch.setattr(model.output_head, "_project", lambda normed: head_calls.append(1) or project(normed))
    sums, used = collect_hessians(model, TokenWindows([stream], 16, 0, 64), 64, batch_sequences=2)
    assert used == 64 and head_calls == []
    # The same windows through a full forward, recording each projection's input and the final norm's output.
    seen: dict[str, list[torch.Tensor]] = {}
    handles = [layer.register_forward_hook(lambda m, args, out, name=name: seen.setdefault(name, []).append(args[0]))
               for name, layer in model.projections().items()]
    handles.append(model.final_norm.register_forward_hook(lambda m, args, out: seen.setdefault(HEAD_INPUT, []).append(out)))
    batches = TokenWindows([stream], 16, 0, 64)
    with torch.no_grad():
        for _ in range(2):
            model(batches.next_batch(2)[0])
    for handle in handles:
        handle.remove()
    assert len(head_calls) == 2 and set(sums) == set(seen)
    for name, inputs in seen.items():
        expected = sum(x.reshape(-1, x.shape[-1]).T @ x.reshape(-1, x.shape[-1]) for x in inputs)
        torch.testing.assert_close(sums[name], expected, rtol=1e-5, atol=1e-5)
