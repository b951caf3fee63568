"""What `alrt quantize` calibrates on and what its `--eval` scores, from one `--data` value: disjoint by construction,
and always in the model's own tokenizer.

- None (the default): the run's own data. Calibration reads its train shards, evaluation its val shards; refused
  when the folder's tokenizer is no longer the model's (ids would mean other tokens), as `alrt eval` refuses it.
- A shard folder: `train_*.bin` for calibration, `val_*.bin` for evaluation; refused when its `tokenizer.model`
  is not the model's.
- Raw text (a .txt/.jsonl file or a folder of them): tokenised with the model's tokenizer (never a freshly trained
  one) and split by document with `split_documents`, at the fraction and seed `alrt data prepare` uses (so the
  run's own raw text splits as it did for training): calibration reads the train part, evaluation only the rest.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from alrt_core.config import RunConfig
from alrt_core.data.documents import Document, read_documents, split_documents
from alrt_core.data.prepare import default_cache_dir, resolve_dataset
from alrt_core.data.shards import list_shards, read_shard
from alrt_core.data.tokenizer import Tokenizer
from alrt_core.errors import UserError
from alrt_core.evaluation.report import document_tokens, same_tokenizer, shard_tokens

VAL_FRACTION = 0.05  # the defaults of `alrt data prepare` (prepare_dataset)
SPLIT_SEED = 1337
TEXT_SAMPLE_FACTOR = 2  # raw text: tokenise train documents (in a seeded order) up to this many times the need


@dataclass
class CalibrationData:
    """Calibration and evaluation tokens of one `--data` value: shard files, or documents tokenised on demand."""

    calibration: str  # descriptions, recorded in the artifact and the JSON report
    evaluation: str
    tokenizer: Tokenizer
    train_files: list[Path] = field(default_factory=list)
    val_files: list[Path] = field(default_factory=list)
    train_documents: list[Document] | None = None
    val_documents: list[Document] | None = None

    def calibration_streams(self, tokens: int, seed: int) -> list[np.ndarray]:
        """Token streams to cut calibration windows from; for text, a seeded sample of the train documents with
        about TEXT_SAMPLE_FACTOR × `tokens` (tokenising a large corpus whole for 32k tokens would be wasted)."""
        if self.train_documents is None:
            return [read_shard(path) for path in self.train_files]
        order = np.random.default_rng(seed).permutation(len(self.train_documents))
        chosen, total, batch = [], 0, 64
        for start in range(0, len(order), batch):
            documents = [self.train_documents[int(index)] for index in order[start : start + batch]]
            chosen.append(document_tokens(documents, self.tokenizer))
            total += chosen[-1].shape[0]
            if total >= TEXT_SAMPLE_FACTOR * tokens:
                break
        return [np.concatenate(chosen)]

    def evaluation_tokens(self) -> tuple[np.ndarray, str]:
        """(token stream, description) of the held-out data, for `run_eval`."""
        if self.val_documents is not None:
            return document_tokens(self.val_documents, self.tokenizer), self.evaluation
        if not self.val_files:
            raise UserError(f"no validation shards to evaluate on: {self.evaluation}")
        return shard_tokens(self.val_files, self.tokenizer), self.evaluation

    def record(self) -> dict[str, Any]:
        """What the artifact's manifest says about its data (`tokens` is added by the caller)."""
        return {
            "data": self.calibration,
            "documents": None if self.train_documents is None else len(self.train_documents),
            "held_out": self.evaluation,
            "held_out_documents": None if self.val_documents is None else len(self.val_documents),
        }


def resolve_calibration_data(data: str | None, tokenizer: Tokenizer, config: RunConfig) -> CalibrationData:
    """The calibration and held-out data that `data` (a `--data` value, or None for the run's) stands for."""
    if data is None:
        info = resolve_dataset(config.data.path, config.data.tokenizer, default_cache_dir(), config.data.vocab_size,
                               progress=False)
        if not same_tokenizer(info.tokenizer_path, tokenizer):
            raise UserError(f"the run's data at {info.root} uses another tokenizer than the model; pass --data")
        name = config.data.path or "embedded Shakespeare"
        return CalibrationData(f"{name} (train split)", f"{name} (validation split)", tokenizer,
                               info.train_files, info.val_files)
    path = Path(data).expanduser()
    if not path.exists():
        raise UserError(f"calibration data not found: {path}")
    if path.is_dir() and (list_shards(path, "train") or list_shards(path, "val")):
        return _shard_folder(path, tokenizer)
    documents = read_documents([path])
    train, val = split_documents(documents, VAL_FRACTION, SPLIT_SEED)
    count = len(documents)
    return CalibrationData(
        f"{path} (train part: {len(train)} of {count} documents, tokenised)",
        f"{path} (held out: {len(val)} of {count} documents, fraction {VAL_FRACTION}, seed {SPLIT_SEED}, tokenised)",
        tokenizer, train_documents=train, val_documents=val,
    )


def _shard_folder(path: Path, tokenizer: Tokenizer) -> CalibrationData:
    train, val = list_shards(path, "train"), list_shards(path, "val")
    if not train:
        raise UserError(f"{path}: no train shards to calibrate on (expected train_*.bin or fineweb_train_*.bin)")
    # Parameter golf's shard folders carry no tokenizer to compare; their ids are still checked against the vocabulary.
    beside = path / "tokenizer.model"
    if beside.is_file() and not same_tokenizer(beside, tokenizer):
        raise UserError(f"{path} was tokenised with another tokenizer than the model's; pass raw text or shards "
                        "prepared with the run's tokenizer.model")
    return CalibrationData(f"{path} ({len(train)} train shard(s))", f"{path} ({len(val)} val shard(s))", tokenizer,
                           train, val)
