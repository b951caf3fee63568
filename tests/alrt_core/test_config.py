"""Presets, `--set` overrides and their errors."""

from __future__ import annotations

import dataclasses

import pytest

from alrt_core.config import SECTIONS, RunConfig, apply_overrides, preset
from alrt_core.errors import UserError
from alrt_core.settings import setting_choices


def test_presets_resolve_and_round_trip_through_json_dict():
    for name in ("tiny", "cpu", "golf"):
        config = preset(name)
        config.model.vocab_size = 1024
        config.validate()
        assert RunConfig.from_dict(config.to_dict()) == config
    golf = preset("golf").model
    assert (golf.num_layers, golf.model_dim, golf.num_heads, golf.num_kv_heads, golf.seq_len) == (11, 512, 8, 4, 2048)


def test_overrides_are_parsed_by_field_type():
    config = apply_overrides(
        preset("tiny"),
        ["model.num_layers=5", "model.mlp_mult=3", "rank.init=none", "rank.safety_factor=3", "train.compile=true", "train.max_minutes=1.5",
         "model.rope_dims=16", "train.batch_tokens=4_096"],
    )
    assert config.model.num_layers == 5 and isinstance(config.model.num_layers, int)
    assert config.model.mlp_mult == 3.0 and config.rank.init is None and config.train.compile is True
    assert config.rank.safety_factor == 3.0
    assert config.train.max_minutes == 1.5 and config.model.rope_dims == 16 and config.train.batch_tokens == 4096


@pytest.mark.parametrize(
    ("assignment", "message"),
    [
        ("model.layers=3", "unknown config key 'model.layers'"),
        ("nosection.x=1", "unknown config key 'nosection.x'"),
        ("model.num_layers=three", "bad value 'three' for model.num_layers: expected int"),
        ("train.compile=maybe", "bad value 'maybe' for train.compile: expected bool"),
        ("model.num_layers", "--set expects section.key=value"),
    ],
)
def test_bad_overrides_are_user_errors(assignment, message):
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace("'", "'")):
        apply_overrides(preset("tiny"), [assignment])


def test_unknown_preset_and_invalid_shapes():
    with pytest.raises(UserError, match="unknown preset 'huge'"):
        preset("huge")
    config = apply_overrides(preset("tiny"), ["model.num_heads=3"])
    with pytest.raises(UserError, match="not divisible by model.num_heads=3"):
        config.validate()
    config = apply_overrides(preset("tiny"), ["train.max_steps=none"])
    with pytest.raises(UserError, match="set train.max_steps or train.max_minutes"):
        config.validate()


@pytest.mark.parametrize(
    ("assignments", "message"),
    [
        (["rank.policy=lowest"], "rank.policy='lowest' must be one of dense, fixed, stable, energy, schedule"),
        (["rank.policy=schedule"], "rank.policy=schedule needs rank.final"),
        (["rank.on_resize=keep"], "rank.on_resize='keep' must be 'project' or 'reset'"),
        (["rank.target_params=1000", "rank.target_bytes=1MB"], "give one budget"),
        (["rank.policy=fixed", "rank.target_bytes=1MB"], "needs rank.policy stable or energy, not fixed"),
        (["rank.target_bytes=16 megabytes"], "bad byte size '16 megabytes'"),
        (["rank.ema_decay=1"], r"rank.ema_decay=1.0 must be in \[0, 1\)"),
        (["rank.dense_warmup_frac=0.5", "rank.kinds=qk=16"], "drop rank.init/rank.kinds"),
        (["rank.dense_warmup_frac=0.5", "rank.init=8"], "drop rank.init/rank.kinds"),
    ],
)
def test_rank_config_errors(assignments, message):
    config = apply_overrides(preset("tiny"), assignments)
    with pytest.raises(UserError, match=message):
        config.validate()


def test_presets_rank_policies():
    assert preset("cpu").rank.policy == "dense" and preset("golf").rank.policy == "dense"
    assert preset("tiny").rank.policy == "stable" and preset("golf-lowrank").rank.policy == "stable"
    assert preset("tiny").rank.update_every == 3


def test_a_saved_config_without_a_later_setting_keeps_what_that_run_did():
    saved = preset("tiny").to_dict()
    assert saved["rank"].pop("bytes_model") == "artifact"  # today's default
    assert RunConfig.from_dict(saved).rank.bytes_model == "packed"  # what runs saved before it counted
    assert RunConfig.from_dict(preset("tiny").to_dict()).rank.bytes_model == "artifact"


def test_every_literal_setting_is_checked_against_the_choices_of_its_type():
    checked = []
    for section, cls in SECTIONS.items():
        for name in (f.name for f in dataclasses.fields(cls)):
            choices = setting_choices(cls, name)
            if not choices:
                continue
            for value in choices:  # each choice passes
                config = apply_overrides(preset("tiny"), [f"{section}.{name}={value}", "rank.final=4"])
                config.model.vocab_size = 1024
                config.validate()
            config = apply_overrides(preset("tiny"), [f"{section}.{name}=bogus"])
            with pytest.raises(UserError, match=f"{section}.{name}='bogus' must be"):
                config.validate()
            checked.append(f"{section}.{name}")
    assert {"model.attn_gate", "train.autocast", "rank.policy", "rank.resize_method", "rank.on_resize"} <= set(checked)
