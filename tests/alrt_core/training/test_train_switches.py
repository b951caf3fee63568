"""Training switches of issue #7: MuonEq-R, per-group weight decay, SWA, late QAT, the compile fallback, and the
golf presets' size."""

from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F
from test_trainer import step_losses, tiny_config

from alrt_core.config import TrainConfig, apply_overrides, preset
from alrt_core.errors import UserError
from alrt_core.model.artifact_estimate import estimate_artifact, gaussian_code_bits
from alrt_core.model.factorized import FactorizedLinear
from alrt_core.model.fake_quant import quantize_dequantize
from alrt_core.model.gpt import GPT, uniform_ranks
from alrt_core.ranks.budget import CostModel
from alrt_core.ranks.plan import initial_layer_ranks
from alrt_core.ranks.resize import resize_layer
from alrt_core.training import muon as muon_module
from alrt_core.training.checkpoint import load_checkpoint
from alrt_core.training.compile import probe
from alrt_core.training.events import read_events
from alrt_core.training.muon import Muon, normalize_rows
from alrt_core.training.optimizers import build_optimizers, split_parameters
from alrt_core.training.swa import WeightSWA, checkpoint_eval_weights
from alrt_core.training.trainer import Trainer
from export.gptq import round_to_nearest
from export.loader import load_for_export

# -- MuonEq-R ------------------------------------------------------------------------------------------------


def _muon_step(grad: torch.Tensor, row_normalize: bool) -> torch.Tensor:
    weight = torch.nn.Parameter(torch.zeros_like(grad))
    weight.grad = grad.clone()
    Muon([weight], lr=1.0, momentum=0.9, row_normalize=row_normalize).step()
    return -weight.detach()


def test_muon_row_normalisation_equalises_rows_before_newton_schulz(monkeypatch):
    torch.manual_seed(0)
    grad = torch.randn(6, 10) * torch.tensor([0.01, 0.1, 1.0, 10.0, 100.0, 1.0])[:, None]  # unequal row norms
    seen: list[torch.Tensor] = []
    original = muon_module.orthogonalize
    monkeypatch.setattr(muon_module, "orthogonalize", lambda m, steps=5, **kw: seen.append(m.clone()) or original(m, steps, **kw))
    _muon_step(grad, row_normalize=True)
    torch.testing.assert_close(seen[0].norm(dim=1), torch.ones(6))  # what Newton–Schulz receives
    torch.testing.assert_close(normalize_rows(grad) * grad.norm(dim=1, keepdim=True), grad)
    # Plain Muon lets the large rows dominate: its update differs; both have the same shape and orthogonal rows.
    plain, equalised = _muon_step(grad, False), _muon_step(grad, True)
    assert (plain - equalised).abs().max() > 0.1
    # With rows of equal norm already, normalising only rescales the whole matrix, which Newton–Schulz ignores.
    even = normalize_rows(torch.randn(6, 10)) * 3.0
    torch.testing.assert_close(_muon_step(even, True), _muon_step(even, False), atol=1e-6, rtol=0)


# -- weight decay per group ----------------------------------------------------------------------------------


def _tiny_gpt() -> GPT:
    torch.manual_seed(0)
    config = preset("tiny").model
    config.vocab_size = 64
    return GPT(config, layer_ranks=uniform_ranks(config, 8))


@pytest.mark.parametrize("group", ["embed", "scalar", "matrix"])
def test_weight_decay_of_one_group_touches_only_that_group(group):
    model = _tiny_gpt()
    config = TrainConfig(max_steps=1, embed_lr=0.5, scalar_lr=0.25, matrix_lr=0.125)
    setattr(config, {"embed": "embed_weight_decay", "scalar": "scalar_weight_decay", "matrix": "weight_decay"}[group], 0.4)
    optimizers = build_optimizers(model, config)
    groups = split_parameters(model)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1)  # the tiny model's zero-initialised tensors must be non-zero to show decay
    before = {id(p): p.detach().clone() for p in model.parameters()}
    for p in model.parameters():
        p.grad = torch.zeros_like(p)  # zero gradients: only the decay moves anything
    for optimizer in optimizers:
        optimizer.step()
    lr = {"embed": 0.5, "scalar": 0.25, "matrix": 0.125}[group]
    for name, params in groups.items():
        for p in params:
            expected = before[id(p)] * (1 - lr * 0.4) if name == group else before[id(p)]
            torch.testing.assert_close(p.detach(), expected, atol=1e-7, rtol=0)


# -- SWA -----------------------------------------------------------------------------------------------------


def test_swa_mean_is_the_mean_of_the_samples_and_follows_the_schedule():
    torch.manual_seed(0)
    samples = [{"w": torch.randn(4, 3), "b": torch.randn(3)} for _ in range(5)]
    swa = WeightSWA(start_frac=0.5, every=10)
    for sample in samples:
        swa.add(sample)
    assert swa.count == 5
    for key in ("w", "b"):
        torch.testing.assert_close(swa.mean[key], torch.stack([s[key] for s in samples]).mean(0), atol=1e-6, rtol=0)
    assert [swa.is_due(step, progress) for step, progress in ((10, 0.4), (10, 0.5), (15, 0.9), (20, 1.0))] == [
        False, True, False, True]


@pytest.mark.parametrize("new_rank", [2, 5])
def test_swa_mean_follows_a_rank_change_by_the_live_layers_maps(new_rank):
    torch.manual_seed(0)
    layer = FactorizedLinear(6, 8, rank=4)
    mean_u, mean_v = layer.U.detach() + 0.1 * torch.randn(8, 4), layer.V.detach() + 0.1 * torch.randn(4, 6)
    swa = WeightSWA(start_frac=0.5, every=1)
    swa.add({"layer.U": mean_u, "layer.V": mean_v})
    resize = resize_layer(layer, new_rank, [], generator=torch.Generator().manual_seed(0))
    swa.follow_resize("layer", resize)
    assert swa.mean["layer.U"].shape == (8, new_rank) and swa.mean["layer.V"].shape == (new_rank, 6)
    torch.testing.assert_close(swa.mean["layer.U"], mean_u @ resize.a, atol=1e-6, rtol=0)
    torch.testing.assert_close(swa.mean["layer.V"], resize.b @ mean_v, atol=1e-6, rtol=0)
    if new_rank > 4:  # growth leaves the mean's function unchanged
        torch.testing.assert_close(swa.mean["layer.U"] @ swa.mean["layer.V"], mean_u @ mean_v, atol=1e-6, rtol=0)


def test_trainer_samples_swa_in_the_window_and_evaluates_the_mean(small_dataset, tmp_path):
    snapshots: dict[int, dict[str, torch.Tensor]] = {}
    config = tiny_config(small_dataset.root, "train.swa_start_frac=0.5", "train.swa_every=2", "train.autocast=off",
                         "rank.policy=dense")
    trainer = Trainer(config, tmp_path / "run", progress=False)

    def keep(event: dict) -> None:
        if event["event"] == "train_step":
            snapshots[event["step"]] = {k: v.detach().clone() for k, v in trainer.state.model.state_dict().items()}

    trainer.listeners.append(keep)
    trainer.run()
    checkpoint = load_checkpoint(tmp_path / "run" / "last.pt")
    assert checkpoint["swa"]["count"] == 3  # steps 4, 6 and 8 of 8: progress >= 0.5 and step % 2 == 0
    for name, mean in checkpoint["swa"]["mean"].items():
        expected = torch.stack([snapshots[step][name] for step in (4, 6, 8)]).mean(0)
        torch.testing.assert_close(mean, expected, atol=1e-6, rtol=0)
    _, _, model = load_for_export(tmp_path / "run" / "last.pt")  # the loader takes the SWA mean
    torch.testing.assert_close(model.state_dict()["embed.weight"], checkpoint["swa"]["mean"]["embed.weight"])
    evals = [e for e in read_events(tmp_path / "run" / "train.jsonl") if e["event"] == "eval"]
    assert [e["swa_samples"] for e in evals] == [1, 3]  # the step-4 eval already uses the step-4 sample
    assert checkpoint_eval_weights({"model": {"a": 1}, "ema": {"a": 2}, "swa": {"count": 0, "mean": None}}) == {"a": 2}


# -- late QAT ------------------------------------------------------------------------------------------------


def test_fake_quantisation_is_the_int_grid_of_the_quantizer_with_straight_through_gradients():
    torch.manual_seed(0)
    weight = torch.randn(16, 24) * torch.linspace(0.1, 2.0, 16)[:, None]
    q, scale = round_to_nearest(weight, bits=6)
    assert torch.equal(quantize_dequantize(weight, 6), q.float() * scale[:, None])

    layer = FactorizedLinear(24, 16, rank=None)
    x = torch.randn(5, 24)
    probe = torch.randn(5, 16)
    plain = layer(x)
    (plain * probe).sum().backward()
    plain_grad = layer.weight.grad.clone()
    layer.weight.grad = None
    layer.fake_quant_bits = 6
    out = layer(x)
    assert torch.equal(out, F.linear(x, quantize_dequantize(layer.weight.detach(), 6)))
    assert not torch.equal(out, plain)
    (out * probe).sum().backward()
    assert torch.equal(layer.weight.grad, plain_grad)  # straight through: d(out)/dW as if W were not rounded
    layer.eval()
    assert torch.equal(layer(x), plain)  # evaluation sees the float weights

    factored = FactorizedLinear(24, 16, rank=4)
    factored.fake_quant_bits = 5
    expected = F.linear(F.linear(x, quantize_dequantize(factored.V.detach(), 5)), quantize_dequantize(factored.U.detach(), 5))
    assert torch.equal(factored(x), expected)


def test_qat_switches_on_when_the_lr_multiplier_crosses_the_threshold_and_stays_on(small_dataset, tmp_path):
    # 10 steps, warmdown over the last half: the multiplier before step s is min(1, (1 - s/10) / 0.5), which is
    # 0.6 before step 7 and 0.4 before step 8, so QAT must start at step 8 (the 9th update).
    common = ("train.max_steps=10", "train.eval_every=10", "train.warmdown_frac=0.5", "train.autocast=off")
    Trainer(tiny_config(small_dataset.root, *common), tmp_path / "plain", progress=False).run()
    trainer = Trainer(tiny_config(small_dataset.root, *common, "train.qat_lr_threshold=0.5", "train.qat_bits=4"),
                      tmp_path / "qat", progress=False)
    trainer.run()
    events = read_events(tmp_path / "qat" / "train.jsonl")
    qat = [e for e in events if e["event"] == "qat_on"]
    assert len(qat) == 1 and qat[0]["step"] == 8 and qat[0]["lr_scale"] == pytest.approx(0.4) and qat[0]["bits"] == 4
    scales = {e["step"]: e["lr_scale"] for e in events if e["event"] == "train_step"}
    assert scales[8] == pytest.approx(0.6) and scales[9] == pytest.approx(0.4)
    plain, quantised = step_losses(tmp_path / "plain"), step_losses(tmp_path / "qat")
    assert [plain[s] for s in range(1, 9)] == [quantised[s] for s in range(1, 9)]
    assert all(plain[s] != quantised[s] for s in (9, 10))
    assert all(layer.fake_quant_bits == 4 for layer in trainer.state.model.projections().values())
    assert load_checkpoint(tmp_path / "qat" / "last.pt")["qat_active"] is True


@pytest.mark.parametrize(("key", "value", "message"), [
    ("train.swa_start_frac", "1.0", "train.swa_start_frac=1.0 must be in [0, 1)"),
    ("train.swa_every", "0", "train.swa_every=0 must be positive"),
    ("train.qat_lr_threshold", "1.5", "train.qat_lr_threshold=1.5 must be in [0, 1]"),
    ("train.qat_bits", "9", "train.qat_bits=9 must be in [2, 8]"),
    ("train.embed_weight_decay", "-0.1", "train.embed_weight_decay=-0.1 must be >= 0"),
    ("train.scalar_weight_decay", "-1", "train.scalar_weight_decay=-1.0 must be >= 0"),
])
def test_switch_values_are_validated(key, value, message):
    config = apply_overrides(preset("tiny"), [f"{key}={value}"])
    with pytest.raises(UserError, match=re.escape(message)):
        config.train.validate()


# -- compile fallback ----------------------------------------------------------------------------------------


class _BrokenCompiled(torch.nn.Module):
    """What a failing backend looks like: the first call raises."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, *args, **kwargs):  # noqa: ANN002, ANN003
        raise RuntimeError("backend='inductor' raised: no working C++ compiler found")


def _fail_on_call(model, **kwargs):  # noqa: ANN001, ANN003
    raise RuntimeError("torch.compile is not supported on this Python")


@pytest.mark.parametrize(("fake_compile", "reason"), [
    (lambda model, **kwargs: _BrokenCompiled(model), "RuntimeError: backend='inductor' raised: no working C++ compiler"),
    (_fail_on_call, "RuntimeError: torch.compile is not supported on this Python"),
])
def test_compile_failure_falls_back_to_eager_with_one_warning(small_dataset, tmp_path, monkeypatch, capsys,
                                                               fake_compile, reason):
    common = ("train.autocast=off", "train.max_steps=4", "train.eval_every=4")
    Trainer(tiny_config(small_dataset.root, *common), tmp_path / "eager", progress=False).run()
    capsys.readouterr()
    monkeypatch.setattr(torch, "compile", fake_compile)
    Trainer(tiny_config(small_dataset.root, *common, "train.compile=true"), tmp_path / "fallback", progress=False).run()
    warnings = [line for line in capsys.readouterr().err.splitlines() if "torch.compile failed" in line]
    assert len(warnings) == 1 and reason in warnings[0]
    events = read_events(tmp_path / "fallback" / "train.jsonl")
    assert [e["event"] for e in events[:2]] == ["run_start", "compile_fallback"] and events[0]["compiled"] is True
    assert events[1]["reason"] == warnings[0].split("(", 1)[1].split(");")[0]
    assert step_losses(tmp_path / "fallback") == step_losses(tmp_path / "eager")  # same batches, same weights


def test_compile_probe_reports_compiler_errors_but_not_out_of_memory():
    def failing(error: Exception):  # noqa: ANN202
        def step() -> None:
            raise error
        return step

    assert probe(failing(RuntimeError("Triton not found\nmore detail"))) == "RuntimeError: Triton not found"
    assert probe(lambda: None) is None
    with pytest.raises(RuntimeError, match="can't allocate memory"):  # eager would not fit either: no fallback
        probe(failing(RuntimeError("[enforce fail at alloc_cpu.cpp:118] DefaultCPUAllocator: can't allocate memory")))


# -- artifact estimate ---------------------------------------------------------------------------------------


def test_gaussian_code_bits_match_the_entropy_of_quantised_gaussian_samples():
    torch.manual_seed(0)
    for bits, clip in ((6, 12.85), (8, 20.0)):
        levels = 2 ** (bits - 1) - 1
        q = torch.clamp(torch.round(torch.randn(2_000_000) / (clip / levels)), -levels, levels)
        p = torch.unique(q, return_counts=True)[1].double() / q.numel()
        assert gaussian_code_bits(bits, clip) == pytest.approx(float(-(p * p.log2()).sum()), abs=0.01)


def test_artifact_estimate_packs_exactly_what_the_cost_model_counts():
    model = _tiny_gpt()
    estimate = estimate_artifact(model)
    assert estimate.packed_bytes == round(CostModel.of(model).total(model.layer_ranks(), "bytes"))
    assert 0 < estimate.compressed_bytes < estimate.packed_bytes


def test_golf_presets_have_the_records_size_at_vocab_8192():
    config = preset("golf")
    config.model.vocab_size = 8192
    model = GPT(config.model, layer_ranks=initial_layer_ranks(config.model, config.rank))  # dense: built in a second
    assert model.num_parameters() == 35_944_536  # `model_params` in the 2026-04-09 record's training log
    estimate = estimate_artifact(model)
    assert 27_000_000 < estimate.packed_bytes < 29_000_000  # int6 before compression does not fit 16 MB
    # The record's quantised + brotli model was 15,975,300 bytes; the estimate for trained weights is within 1%.
    assert estimate.compressed_bytes == pytest.approx(15_975_300, rel=0.01)
    # golf-lowrank: Q and K start at rank 64, the other kinds at break-even (as many parameters as dense).
    lowrank = preset("golf-lowrank")
    lowrank.model.vocab_size = 8192
    ranks = initial_layer_ranks(lowrank.model, lowrank.rank)
    assert {ranks[f"blocks.{i}.attn.{kind}"] for i in range(11) for kind in "qk"} == {64}
    # Per block: q 64·1024 + k 64·768 + v 170·768 + o 256·1024 + up, down 409·2560, against 2,883,584 dense.
    per_block = 64 * 1024 + 64 * 768 + 170 * 768 + 256 * 1024 + 2 * 409 * 2560
    assert CostModel.of(model).total(ranks, "params") == 35_944_536 - 11 * (2_883_584 - per_block) == 32_841_304
    golf_train = preset("golf").train
    assert (golf_train.ema_decay, golf_train.warmdown_frac, golf_train.muon_row_normalize) == (0.9965, 0.72, True)
