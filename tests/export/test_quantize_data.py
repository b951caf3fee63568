"""What `alrt quantize` calibrates on and what `--eval` scores: the model's tokenizer, and never the same documents."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from run_helpers import tiny_checkpoint

import alrt_core.evaluation.report
import export.quantize
from alrt_cli.quantize_cmd import quantize as quantize_command
from alrt_core.data.corpus import load_shakespeare
from alrt_core.data.documents import read_documents
from alrt_core.data.prepare import prepare_dataset
from alrt_core.data.shards import read_shard
from alrt_core.data.tokenizer import Tokenizer
from alrt_core.errors import UserError
from export.artifact import read_artifact
from export.quantize import QuantizeOptions, quantize_checkpoint

FAST = {"calib_tokens": 1024, "small_max": 0}
SEGMENT = 12  # calibration pieces at least this long are matched to the document they come from


@pytest.fixture(scope="module")
def checkpoint(small_dataset, tmp_path_factory) -> Path:
    return tiny_checkpoint(tmp_path_factory.mktemp("quantize-data") / "run", small_dataset.root,
                           small_dataset.tokenizer_path)


@pytest.fixture(scope="module")
def text_file(tmp_path_factory) -> Path:
    """40 documents, each a passage of a different work (so no long token run is shared by two of them)."""
    path = tmp_path_factory.mktemp("text") / "passages.jsonl"
    works = [work for work in load_shakespeare() if len(work.text) > 6500][:40]
    path.write_text("".join(json.dumps({"title": w.title, "text": w.text[5000:6500]}) + "\n" for w in works),
                    encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def other_dataset(tmp_path_factory):
    """Shards with a tokenizer of their own (trained on other text than the model's)."""
    root = tmp_path_factory.mktemp("other")
    works = [w for w in load_shakespeare() if w.title in ("Hamlet", "Othello")]
    paths = []
    for work in works:
        paths.append(root / f"{work.title}.txt")
        paths[-1].write_text(work.text[:40_000], encoding="utf-8")
    return prepare_dataset(paths, root / "prepared", vocab_size=384, progress=False)


def _record_calibration(monkeypatch) -> list[np.ndarray]:
    """Every window (inputs + last target) the Hessians are collected from."""
    windows: list[np.ndarray] = []
    collect = export.quantize.collect_hessians

    class Recording:
        def __init__(self, batches) -> None:
            self.batches = batches

        def next_batch(self, sequences: int) -> tuple[torch.Tensor, torch.Tensor]:
            inputs, targets = self.batches.next_batch(sequences)
            windows.extend(torch.cat([inputs, targets[:, -1:]], dim=1).numpy())
            return inputs, targets

    monkeypatch.setattr(export.quantize, "collect_hessians",
                        lambda model, batches, tokens, **kw: collect(model, Recording(batches), tokens, **kw))
    return windows


def _record_scoring(monkeypatch) -> list[np.ndarray]:
    """The token stream of every `run_eval` call."""
    streams: list[np.ndarray] = []
    score = alrt_core.evaluation.report.score_windows

    def recording(model, tokens, *args, **kwargs):
        streams.append(np.asarray(tokens).copy())
        return score(model, tokens, *args, **kwargs)

    monkeypatch.setattr(alrt_core.evaluation.report, "score_windows", recording)
    return streams


def _text(ids) -> str:
    return "," + ",".join(str(int(i)) for i in ids) + ","


def _segments(stream: np.ndarray, bos: int) -> list[np.ndarray]:
    """The pieces of a token stream between BOS tokens."""
    pieces = (part[part != bos] for part in np.split(stream, np.flatnonzero(stream == bos)))
    return [piece for piece in pieces if piece.size]


def _calibration_documents(windows: list[np.ndarray], documents: list[str], bos: int) -> set[int]:
    """Indices of the documents the calibration windows were cut from (each long piece must come from one)."""
    found: set[int] = set()
    for window in windows:
        for piece in _segments(window, bos):
            if piece.size < SEGMENT:
                continue
            sources = {index for index, text in enumerate(documents) if _text(piece) in text}
            assert sources, "a calibration window is not text of the file in the model's tokenizer"
            found |= sources
    return found


def test_raw_text_calibration_is_tokenised_with_the_model_tokenizer(checkpoint, text_file, isolated_cache,
                                                                   monkeypatch):
    windows = _record_calibration(monkeypatch)
    result = quantize_checkpoint(checkpoint, QuantizeOptions(data=str(text_file), **FAST))
    tokenizer = Tokenizer.load(checkpoint.parent / "tokenizer.model")
    documents = [_text(tokenizer.encode(doc.text)) for doc in read_documents([text_file])]
    assert sum(w.size - 1 for w in windows) >= FAST["calib_tokens"]
    assert len(_calibration_documents(windows, documents, tokenizer.bos_id)) >= 5
    assert str(text_file) in result.manifest["calibration"]["data"]
    assert not isolated_cache.exists()  # nothing prepared (no tokenizer trained) for calibration text


def test_shard_folder_with_another_tokenizer_is_refused(checkpoint, other_dataset):
    with pytest.raises(UserError, match="another tokenizer") as error:
        quantize_checkpoint(checkpoint, QuantizeOptions(data=str(other_dataset.root), **FAST))
    assert "\n" not in str(error.value) and str(other_dataset.root) in str(error.value)


def test_run_data_with_another_tokenizer_is_refused(small_dataset, other_dataset, tmp_path):
    # The run's data folder was re-prepared with another tokenizer after training: its ids mean other tokens.
    checkpoint = tiny_checkpoint(tmp_path / "run", other_dataset.root, small_dataset.tokenizer_path)
    with pytest.raises(UserError, match="another tokenizer than the model") as error:
        quantize_checkpoint(checkpoint, QuantizeOptions(**FAST))
    assert "\n" not in str(error.value) and "--data" in str(error.value)


def test_eval_of_a_text_file_never_scores_calibration_documents(checkpoint, text_file, isolated_cache, monkeypatch,
                                                               capsys, tmp_path):
    windows, scored = _record_calibration(monkeypatch), _record_scoring(monkeypatch)
    out = tmp_path / "m.alrt"
    quantize_command(checkpoint, out=out, data=str(text_file), run_eval=True, as_json=True, **FAST)
    summary = json.loads(capsys.readouterr().out)
    tokenizer = Tokenizer.load(checkpoint.parent / "tokenizer.model")
    texts = [doc.text for doc in read_documents([text_file])]
    documents = [_text(tokenizer.encode(text)) for text in texts]

    assert len(scored) == 2 and np.array_equal(scored[0], scored[1])  # checkpoint and artifact: the same tokens
    evaluated = {documents.index(_text(piece)) for piece in _segments(scored[0], tokenizer.bos_id)}
    assert len(texts) == 40 and len(_segments(scored[0], tokenizer.bos_id)) == len(evaluated) == 2  # 5%, whole
    calibrated = _calibration_documents(windows, documents, tokenizer.bos_id)
    assert len(calibrated) >= 5 and not calibrated & evaluated

    assert summary["calibration"]["documents"] == 38 and summary["eval"]["documents"] == 2
    assert str(text_file) in summary["calibration"]["data"] and "held out" in summary["eval"]["data"]
    assert summary["calibration"]["tokens"] >= FAST["calib_tokens"]
    assert summary["eval"]["tokens"] == scored[0].size - 1  # targets scored, as `alrt eval` counts them
    recorded = read_artifact(out)[0]["calibration"]  # the artifact says what it was calibrated on and what held out
    assert recorded["data"] == summary["calibration"]["data"] and recorded["held_out"] == summary["eval"]["data"]


def test_shard_folder_calibrates_on_train_shards_and_evaluates_on_val_shards(checkpoint, small_dataset, monkeypatch,
                                                                           capsys, tmp_path):
    windows, scored = _record_calibration(monkeypatch), _record_scoring(monkeypatch)
    quantize_command(checkpoint, out=tmp_path / "m.alrt", data=str(small_dataset.root), run_eval=True, as_json=True,
                     **FAST)
    summary = json.loads(capsys.readouterr().out)
    train = [_text(read_shard(path)) for path in small_dataset.train_files]
    val = np.concatenate([np.asarray(read_shard(path), dtype=np.int64) for path in small_dataset.val_files])
    assert all(any(_text(window) in shard for shard in train) for window in windows)
    assert len(scored) == 2 and all(np.array_equal(stream, val) for stream in scored)
    assert "train" in summary["calibration"]["data"] and "val" in summary["eval"]["data"]
