"""Dense warm start (`rank.dense_warmup_frac`): train W dense, then factorise it by SVD, momentum carried."""

from __future__ import annotations

import torch
from model_helpers import train_a_few_steps
from test_trainer import rank_events, step_losses, tiny_config

from alrt_core.config import RunConfig
from alrt_core.model.factorized import FactorizedLinear
from alrt_core.ranks.resize import factorize_layer, follow_factorization
from alrt_core.training.checkpoint import load_checkpoint
from alrt_core.training.events import read_events
from alrt_core.training.muon import Muon
from alrt_core.training.trainer import Trainer


def dense_trained(out_features: int = 12, in_features: int = 16) -> tuple[FactorizedLinear, Muon]:
    torch.manual_seed(0)
    layer = FactorizedLinear(in_features, out_features, rank=None)
    optimizer = Muon([{"params": list(layer.parameters()), "name": "dense"}, {"params": [], "name": "factor"}],
                     lr=0.02, momentum=0.9)
    train_a_few_steps(layer, optimizer)
    return layer, optimizer


def test_factorising_at_full_rank_keeps_the_function_and_carries_momentum_into_both_factors():
    layer, optimizer = dense_trained()
    x = torch.randn(5, 16)
    before, weight = layer(x), layer.weight.detach().clone()
    momentum = optimizer.state[layer.weight]["momentum_buffer"].clone()
    v = factorize_layer(layer, 12, [optimizer])
    assert layer.weight is None and layer.U.shape == (12, 12) and layer.V.shape == (12, 16)
    torch.testing.assert_close(layer(x), before, atol=1e-5, rtol=1e-5)  # the same map, up to float error
    torch.testing.assert_close(layer.U @ layer.V, weight, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(v, layer.V.detach())
    # Momentum maps like gradients of W = U·V: G_U = G·Vᵀ, G_V = Uᵀ·G.
    torch.testing.assert_close(optimizer.state[layer.U]["momentum_buffer"], momentum @ layer.V.detach().T)
    torch.testing.assert_close(optimizer.state[layer.V]["momentum_buffer"], layer.U.detach().T @ momentum)
    assert optimizer.param_groups[0]["params"] == [] and len(optimizer.param_groups[1]["params"]) == 2
    layer(torch.randn(8, 16)).square().sum().backward()
    optimizer.step()  # Muon trains the new factors


def test_a_lower_rank_keeps_the_best_approximation_and_copies_follow_the_live_v():
    layer, optimizer = dense_trained()
    weight = layer.weight.detach().clone()
    average = weight + 0.05 * torch.randn_like(weight)
    copies = {"layer.weight": average.clone()}
    v = factorize_layer(layer, 5, [optimizer])
    p, sigma, qh = torch.linalg.svd(weight)
    torch.testing.assert_close(layer.U @ layer.V, (p[:, :5] * sigma[:5]) @ qh[:5], atol=1e-5, rtol=1e-5)
    follow_factorization(copies, "layer", v)
    assert set(copies) == {"layer.U", "layer.V"} and copies["layer.U"].shape == (12, 5)
    torch.testing.assert_close(copies["layer.V"], layer.V.detach())
    # The copy keeps its own W on the live layer's kept input subspace: W_copy·Q·Qᵀ.
    q = qh[:5].T
    torch.testing.assert_close(copies["layer.U"] @ copies["layer.V"], average @ q @ q.T, atol=1e-5, rtol=1e-5)


def test_a_still_zero_weight_factorises_as_a_zero_initialised_layer_not_as_dead_factors():
    layer = FactorizedLinear(16, 12, rank=None, zero_init=True)
    optimizer = Muon([{"params": list(layer.parameters()), "name": "dense"}, {"params": [], "name": "factor"}], lr=0.02)
    factorize_layer(layer, 6, [optimizer], torch.Generator().manual_seed(0))
    assert torch.count_nonzero(layer.U) == 0 and torch.count_nonzero(layer.V) == 6 * 16  # the zero map, alive
    layer(torch.randn(8, 16)).sum().backward()
    assert layer.U.grad.abs().sum() > 0  # U learns through the random V (with U = V = 0 both gradients were 0)
    optimizer.step()
    assert torch.count_nonzero(layer.U) > 0


def test_the_switch_never_comes_before_the_first_step(small_dataset):
    from alrt_core.model.gpt import GPT
    from alrt_core.ranks.manager import RankManager

    config = tiny_config(small_dataset.root, "rank.dense_warmup_frac=0.1", "model.vocab_size=384")
    model = GPT(config.model)
    manager = RankManager(config.rank, model, seed=0, steps_per_epoch=10)
    # A wallclock run whose compilation already passed the fraction at step 0 must still train dense first.
    assert not manager.factorization_due(model, step=0, progress=0.5)
    assert manager.factorization_due(model, step=1, progress=0.5)


def test_trainer_switches_at_the_fraction_within_the_budget_and_resumes_exactly_across_it(small_dataset, tmp_path):
    config = tiny_config(small_dataset.root, "rank.dense_warmup_frac=0.5", "rank.update_every=2",
                         "rank.warmup_steps=0", "rank.target_bytes=40kB", "train.ema_decay=0.9")
    straight = tmp_path / "straight"
    Trainer(RunConfig.from_dict(config.to_dict()), straight, progress=False).run()
    events = read_events(straight / "train.jsonl")
    start, switch = events[0], next(e for e in events if e["event"] == "factorize")
    assert all(rank is None for rank in start["layer_ranks"].values())  # dense until half of the 8 steps
    assert switch["step"] == 4 and all(rank >= 1 for rank in switch["ranks"].values())
    assert switch["budget_estimate"] <= 40_000  # the switch takes the ranks the budget allows at once
    updates = [e for e in events if e["event"] == "rank_update"]
    assert [e["step"] for e in updates] == [4, 6, 8]  # the switch, then the controller as usual
    assert all(e["budget_estimate"] <= 40_000 for e in updates)
    assert load_checkpoint(straight / "last.pt")["ranks"] == {**start["layer_ranks"], **{
        e["layer"]: e["new_rank"] for e in events if e["event"] == "rank_change"}}

    for stop_at in (2, 6):  # before and after the switch
        interrupted = tmp_path / f"stopped-{stop_at}"
        trainer = Trainer(RunConfig.from_dict(config.to_dict()), interrupted, progress=False)
        trainer.config.train.eval_every = 2
        trainer.listeners.append(
            lambda e, t=trainer, s=stop_at: t.request_stop("test") if e["event"] == "eval" and e["step"] == s else None)
        trainer.run()
        Trainer(None, resume=interrupted / "last.pt", progress=False).run()
        assert step_losses(interrupted) == step_losses(straight)
        assert rank_events(interrupted) == rank_events(straight)
