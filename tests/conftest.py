"""Shared fixtures: a small prepared dataset cut from the embedded corpus (prepared once per session)."""

from __future__ import annotations

from pathlib import Path

import pytest

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


@pytest.fixture()
def isolated_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point ALRT's dataset cache at a temp folder so tests never touch ~/.cache."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("ALRT_CACHE", str(cache))
    return cache
