"""The token embedding's quantisation: an untied embedding is a lookup table (error per row), a tied one is the head."""

from __future__ import annotations

import torch
from run_helpers import tiny_checkpoint

from alrt_core.training.batches import TrainBatches
from export.calibration import HEAD_INPUT, collect_hessians
from export.gptq import quantize_matrix, round_to_nearest
from export.loader import load_for_export
from export.quantize import EMBED_CLIP_CANDIDATES, QuantizeOptions, _plan, quantize_checkpoint

BITS = 6


def _lookup_error(approx: torch.Tensor, embedding: torch.Tensor) -> float:
    """‖Ê − E‖ / ‖E‖: what every looked-up row gets wrong, whatever the model does with it afterwards."""
    return float((approx - embedding).norm() / embedding.norm())


def test_untied_embedding_is_rounded_per_row_not_against_the_head_hessian(small_dataset, tmp_path):
    checkpoint = tiny_checkpoint(tmp_path / "run", small_dataset.root, small_dataset.tokenizer_path,
                                 tie_embeddings=False)
    result = quantize_checkpoint(checkpoint, QuantizeOptions(embed_bits=BITS, calib_tokens=1024, small_max=0))
    _, config, model = load_for_export(checkpoint)
    embedding = model.embed.weight.detach().float()
    stored = result.quantized["embed.weight"]
    assert stored.bits == BITS and "head.weight" in result.quantized  # the untied head is quantised separately

    rounding = min(  # plain per-row rounding at the same bits, the best of the same clip candidates
        _lookup_error(q.float() * scale[:, None], embedding)
        for q, scale in (round_to_nearest(embedding, BITS, clip) for clip in EMBED_CLIP_CANDIDATES)
    )
    batches = TrainBatches(small_dataset.train_files, config.model.seq_len, seed=0)
    sums, used = collect_hessians(model, batches, 1024)
    head_path = quantize_matrix(embedding, sums[HEAD_INPUT] / used, BITS, clips=EMBED_CLIP_CANDIDATES)

    error = _lookup_error(stored.dequantize(), embedding)
    assert error <= rounding + 1e-7
    assert error < 0.9 * _lookup_error(head_path.dequantize(), embedding)


def test_tied_embedding_keeps_the_head_hessian_and_untied_gets_the_identity(small_dataset, tmp_path):
    hessians = {}
    for tied in (True, False):
        checkpoint = tiny_checkpoint(tmp_path / f"run-{tied}", small_dataset.root, small_dataset.tokenizer_path,
                                     tie_embeddings=tied)
        _, _, model = load_for_export(checkpoint)
        head_h = torch.randn(32, 32, generator=torch.Generator().manual_seed(0))
        head_h = head_h @ head_h.T
        sums = {name: torch.eye(layer.in_features) for name, layer in model.projections().items()}
        plans = _plan(model, {**sums, HEAD_INPUT: head_h}, QuantizeOptions(small_max=0))[0]
        hessians[tied] = {name: plans[name].hessian for name in ("embed.weight", "head.weight") if name in plans}
        assert all(torch.equal(h, head_h) for name, h in hessians[tied].items() if name == "head.weight" or tied)
    assert set(hessians[True]) == {"embed.weight"} and set(hessians[False]) == {"embed.weight", "head.weight"}
    assert torch.equal(hessians[False]["embed.weight"], torch.eye(32))
