"""The architecture switches of `ModelConfig`: each one's shape and gradients, KV-cache equality, checkpoint round
trip, BOS isolation, the recurrence schedule, the layer-set specs and the config checks."""

from __future__ import annotations

import math

import pytest
import torch
from model_helpers import ALL_ON, SWITCHES, logits_through_cache, perturb

from alrt_core.config import ModelConfig, RunConfig
from alrt_core.errors import UserError
from alrt_core.model.attention import exclude_self_value
from alrt_core.model.embeddings_extra import NO_TOKEN, previous_tokens
from alrt_core.model.gpt import GPT, uniform_ranks
from alrt_core.model.layer_sets import layer_schedule, parse_layer_set, parse_span
from alrt_core.training.checkpoint import save_checkpoint
from alrt_core.training.optimizers import split_parameters
from export.loader import load_for_export

VOCAB, BOS = 64, 1


def config(**changes) -> ModelConfig:
    shape = {"vocab_size": VOCAB, "num_layers": 4, "model_dim": 32, "num_heads": 4, "num_kv_heads": 2, "seq_len": 32}
    return ModelConfig(**{**shape, **changes})


def build(changes: dict, ranks: int | None = None, seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    return perturb(GPT(config(**changes), layer_ranks=uniform_ranks(config(**changes), ranks)), seed=seed)


def tokens_with_documents() -> torch.Tensor:
    """Two rows with BOS at the start, inside pieces and exactly at piece boundaries of `CUTS`."""
    tokens = torch.randint(2, VOCAB, (2, 24), generator=torch.Generator().manual_seed(3))
    tokens[0, [0, 9, 13, 20]] = BOS
    tokens[1, [5, 12, 17]] = BOS
    return tokens


CUTS = [7, 12, 16]  # prefill 7, a 5-token chunk, a 4-token chunk starting at a BOS, then single tokens


@pytest.mark.parametrize("name", list(SWITCHES))
def test_switch_forward_shape_gradients_and_effect(name):
    changes, new_parameters = SWITCHES[name]
    model = build(changes).train()
    plain = GPT(config(), layer_ranks=None)
    added = set(dict(model.named_parameters())) - set(dict(plain.named_parameters()))
    assert {p for p in added if any(pattern in p for pattern in new_parameters)} == added
    assert all(any(pattern in p for p in added) for pattern in new_parameters)
    tokens = tokens_with_documents()
    loss = model(tokens[:, :-1], tokens[:, 1:])
    loss.backward()
    assert model(tokens).shape == (2, 24, VOCAB) and math.isfinite(loss.item())
    for parameter_name, parameter in model.named_parameters():
        assert parameter.grad is not None and torch.isfinite(parameter.grad).all(), parameter_name
        if parameter_name in added:
            assert parameter.grad.abs().sum() > 0, parameter_name
    # The switch changes the function: the plain model with the shared weights computes something else.
    if name != "recurrence":  # (its skip weights have another shape; see the recurrence tests)
        plain.load_state_dict(model.state_dict(), strict=False)
        with torch.no_grad():
            assert not torch.allclose(plain.eval()(tokens), model.eval()(tokens), atol=1e-4)


@pytest.mark.parametrize("name", [*SWITCHES, "all", "all_dense_gate"])
def test_kv_cached_logits_equal_full_recompute(name):
    changes = ALL_ON if name.startswith("all") else SWITCHES[name][0]
    if name == "all_dense_gate":
        changes = {**ALL_ON, "attn_gate": "dense"}
    model = build(changes, ranks=5 if name.startswith("all") else None).eval()
    tokens = tokens_with_documents()
    with torch.no_grad():
        full = model(tokens)
    torch.testing.assert_close(logits_through_cache(model, tokens, CUTS), full, atol=2e-5, rtol=1e-5)


def test_recurrence_gives_every_layer_application_its_own_cache_slot():
    model = build({"recur_layers": "1-2", "recur_loops": 3}).eval()
    assert model.layer_schedule() == [0, 1, 2, 1, 2, 1, 2, 3]
    assert model.new_cache(batch_size=1).keys.shape[0] == 8
    assert model.skip_weights is not None and model.skip_weights.shape[0] == 4  # 8 applications: 4 skips


@pytest.mark.parametrize("name", [*SWITCHES, "all"])
def test_checkpoint_round_trip_gives_identical_logits(name, tmp_path):
    changes = ALL_ON if name == "all" else SWITCHES[name][0]
    model = build(changes, ranks=6).eval()
    run = RunConfig(preset="custom", model=config(**changes))
    save_checkpoint(tmp_path / "last.pt", {"config": run.to_dict(), "model": model.state_dict(), "ema": None,
                                           "ranks": model.layer_ranks(), "step": 0})
    _, _, loaded = load_for_export(tmp_path / "last.pt")
    tokens = tokens_with_documents()
    with torch.no_grad():
        assert torch.equal(loaded(tokens), model(tokens))


def _changed_before_bos(tokens: torch.Tensor, bos_at: int) -> torch.Tensor:
    other = tokens.clone()
    other[:, 1:bos_at] = (other[:, 1:bos_at] + 7) % (VOCAB - 2) + 2  # never BOS
    return other


def test_document_mask_smear_and_bigram_never_look_across_a_bos():
    tokens = tokens_with_documents()[:1]  # BOS at 0, 9, 13, 20
    other = _changed_before_bos(tokens, 9)
    for changes in ({"doc_mask": True}, {"doc_mask": True, "smear_gate": True}, {"doc_mask": True, "bigram_hash_size": 61},
                    ALL_ON):
        model = build(changes).eval()
        with torch.no_grad():
            a, b = model(tokens), model(other)
        assert not torch.allclose(a[:, :9], b[:, :9])  # the first document did change
        torch.testing.assert_close(a[:, 9:], b[:, 9:], atol=1e-6, rtol=0)  # everything from its BOS on did not
    without_mask = build({}).eval()
    with torch.no_grad():
        assert not torch.allclose(without_mask(tokens)[:, 9:], without_mask(other)[:, 9:])


@pytest.mark.parametrize("changes", [{"smear_gate": True}, {"bigram_hash_size": 61}])
def test_smear_and_bigram_embedding_stream_is_isolated_at_bos(changes):
    """Without the document mask attention still mixes documents; the embedding stream itself must not."""
    model = build(changes).eval()
    captured: list[torch.Tensor] = []
    model.blocks[0].register_forward_pre_hook(lambda module, args: captured.append(args[0]))
    tokens = tokens_with_documents()[:1]
    with torch.no_grad():
        model(tokens)
        model(_changed_before_bos(tokens, 9))
    changed = ~torch.isclose(captured[0], captured[1]).all(dim=-1)[0]
    assert changed[:9].any() and not changed[9:].any()
    assert changed[1:9].all()  # inside the first document the previous token does reach each position


def test_previous_tokens_mark_the_context_start_and_every_bos():
    ids = torch.tensor([[5, 6, BOS, 7], [BOS, 8, 9, 10]])
    assert previous_tokens(ids, None, BOS).tolist() == [[NO_TOKEN, 5, NO_TOKEN, BOS], [NO_TOKEN, BOS, 8, 9]]
    assert previous_tokens(ids, torch.tensor([4, 3]), BOS).tolist() == [[4, 5, NO_TOKEN, BOS], [NO_TOKEN, BOS, 8, 9]]


def test_xsa_output_is_orthogonal_to_the_heads_own_value():
    y, v = torch.randn(2, 4, 5, 8), torch.randn(2, 2, 5, 8)
    out = exclude_self_value(y, v)
    own = v.repeat_interleave(2, dim=1)  # heads 0,1 share KV head 0
    assert torch.allclose((out * own).sum(-1), torch.zeros(2, 4, 5), atol=1e-5)
    assert torch.allclose(out - y, -((y * own).sum(-1, keepdim=True) / own.square().sum(-1, keepdim=True)) * own, atol=1e-5)


def test_depth_scale_and_parallel_blocks_are_set_by_index():
    model = build({"depth_norm_scale": True, "parallel_from": 2})
    assert [block.input_scale for block in model.blocks] == [1.0, 1 / math.sqrt(2), 1 / math.sqrt(3), 0.5]
    assert [block.parallel for block in model.blocks] == [False, False, True, True]
    assert [block.attn.xsa for block in build({"xsa_layers": "0,2-"}).blocks] == [True, False, True, True]
    value_embed = build({"value_embed_layers": "0,3"}).blocks
    assert [block.attn.value_embed_scale is not None for block in value_embed] == [True, False, False, True]


def test_recurrence_is_off_in_training_until_switched_on_and_always_on_in_eval():
    model = build({"recur_layers": "1-2", "recur_loops": 2})
    tokens = tokens_with_documents()
    looped, plain = [0, 1, 2, 1, 2, 3], [0, 1, 2, 3]
    assert model.train().layer_schedule() == looped  # never switched off by a trainer: loops (e.g. TTT, export)
    assert model.set_recurrence(False) is False and model.layer_schedule() == plain
    with torch.no_grad():
        off = model(tokens)
        assert model.eval().layer_schedule() == looped
        evaluated = model(tokens)
        assert model.set_recurrence(True) is True and model.set_recurrence(True) is False
        on = model.train()(tokens)
    assert torch.equal(evaluated, on) and not torch.allclose(off, on)
    assert build({}).set_recurrence(True) is False  # no span: nothing to switch


def test_optimizer_groups_route_tables_matrices_and_gates():
    model = build({**ALL_ON, "attn_gate": "dense"})
    groups = {name: {id(p) for p in params} for name, params in split_parameters(model).items()}
    names = {id(p): n for n, p in model.named_parameters()}
    assert {names[i] for i in groups["embed"]} == {"embed.weight", "bigram.table.weight", "value_embed.table.weight"}
    assert {"bigram.proj.weight", "value_embed.proj.weight"} <= {names[i] for i in groups["matrix"]}
    scalars = {names[i] for i in groups["scalar"]}
    assert {"smear.gate.weight", "smear.lam", "bigram.scale", "skip_gates", "blocks.1.attn.gate.weight",
            "blocks.0.attn.value_mix", "blocks.2.attn.value_embed_scale"} <= scalars
    assert sum(len(ids) for ids in groups.values()) == len(names)  # every parameter exactly once


def test_layer_set_specs_and_schedule():
    assert parse_layer_set("", 6) == frozenset() and parse_layer_set("all", 3) == {0, 1, 2}
    assert parse_layer_set("1, 3-4", 6) == {1, 3, 4} and parse_layer_set("4-", 6) == {4, 5}
    assert parse_span("2-3", 6) == (2, 3) and parse_span("", 6) is None
    assert layer_schedule(6, (2, 3), 3) == [0, 1, 2, 3, 2, 3, 2, 3, 4, 5]
    for spec, message in (("7", "not a range inside blocks 0..5"), ("3-1", "not a range"), ("x", "expected ''"),
                          ("1,,2", "expected ''")):
        with pytest.raises(UserError, match=message):
            parse_layer_set(spec, 6, key="xsa_layers")
    with pytest.raises(UserError, match="one contiguous span"):
        parse_span("1,3", 6)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"attn_gate": "wide"}, "model.attn_gate='wide' must be"),
        ({"attn_gate_dims": 0}, "attn_gate_dims=0 must be in"),
        ({"parallel_from": 4}, "parallel_from=4 must be a block index"),
        ({"recur_layers": "0,2"}, "recur_layers='0,2' must be one contiguous span"),
        ({"recur_loops": 0}, "recur_loops=0 must be >= 1"),
        ({"recur_start_frac": 1.5}, "recur_start_frac=1.5 must be in"),
        ({"bigram_hash_size": 1}, "bigram_hash_size=1 must be 0"),
        ({"value_embed_layers": "9"}, "value_embed_layers='9'"),
        ({"bos_id": 64}, "bos_id=64 is outside"),
        ({"skip_gates": True, "unet_skips": False}, "skip_gates needs model.unet_skips"),
    ],
)
def test_bad_switch_values_are_user_errors(changes, message):
    with pytest.raises(UserError, match=message):
        config(**changes).validate()
