"""Shared fixtures: a small prepared dataset cut from the embedded corpus and a tiny model trained on it for the
server's tests (each made once per session)."""

from __future__ import annotations

from pathlib import Path

import pytest
from run_helpers import train_tiny

from alrt_core.data.corpus import load_shakespeare
from alrt_core.data.prepare import DatasetInfo, prepare_dataset

SMALL_WORKS = ("Macbeth", "The Tempest", "Julius Caesar", "The Phoenix and the Turtle")


@pytest.fixture(scope="session")
def small_dataset(tmp_path_factory: pytest.TempPathFactory) -> DatasetInfo:
    """Three plays for training, one short poem for validation, vocab 384."""
    root = tmp_path_factory.mktemp("small-corpus")
    works = {doc.title: doc.text for doc in load_shakespeare() if doc.title in SMALL_WORKS}
    train_files = []
    for title in SMALL_WORKS[:3]:
        path = root / f"{title}.txt"
        path.write_text(works[title][:60_000], encoding="utf-8")
        train_files.append(path)
    val = root / "val.txt"
    val.write_text(works[SMALL_WORKS[3]], encoding="utf-8")
    return prepare_dataset(train_files, root / "prepared", vocab_size=384, val_inputs=[val], progress=False)


@pytest.fixture(scope="session")
def serve_checkpoint(small_dataset: DatasetInfo, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`last.pt` of the tiny preset trained 8 steps with a 128-token context: what the serving tests serve."""
    run_dir = train_tiny(tmp_path_factory.mktemp("serve") / "run", small_dataset.root, "train.max_steps=8",
                         "train.eval_every=8", "model.seq_len=128")
    return run_dir / "last.pt"


@pytest.fixture()
def isolated_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point ALRT's dataset cache at a temp folder so tests never touch ~/.cache."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("ALRT_CACHE", str(cache))
    return cache
