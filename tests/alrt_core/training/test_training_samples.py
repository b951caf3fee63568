"""Samples while training: logged as `sample` events by the generation code, without changing the training."""

from __future__ import annotations

from test_trainer import step_losses, tiny_config

from alrt_core.inference.sampling import SamplingConfig
from alrt_core.inference.session import Session
from alrt_core.training.events import read_events
from alrt_core.training.trainer import Trainer
from export.loader import load_model


def test_samples_are_logged_reproducible_and_leave_training_unchanged(small_dataset, tmp_path):
    plain = Trainer(tiny_config(small_dataset.root, "train.autocast=off"), tmp_path / "plain", progress=False).run()
    sampled_dir = tmp_path / "sampled"
    config = tiny_config(small_dataset.root, "train.autocast=off", "train.sample_every=4", "train.sample_tokens=12",
                         "train.sample_prompt=ROMEO.")
    sampled = Trainer(config, sampled_dir, progress=False).run()
    assert step_losses(sampled_dir) == step_losses(tmp_path / "plain")
    assert sampled.final.bpb == plain.final.bpb

    samples = [e for e in read_events(sampled_dir / "train.jsonl") if e["event"] == "sample"]
    assert [e["step"] for e in samples] == [4, 8]
    assert all(e["prompt"] == "ROMEO." and e["new_tokens"] == 12 and e["text"] for e in samples)
    # The step-8 sample is what `alrt generate` would write from the step-8 checkpoint with the same seed.
    loaded = load_model(sampled_dir / "last.pt")
    prompt = [loaded.tokenizer.bos_id, *loaded.tokenizer.encode("ROMEO.")]
    sampling = SamplingConfig(temperature=config.train.sample_temperature, top_k=50, seed=config.train.seed + 8)
    again = Session(loaded.model, loaded.tokenizer).generate(prompt, max_new_tokens=12, sampling=sampling)
    assert again.text == samples[-1]["text"]
