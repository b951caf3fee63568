"""`alrt data prepare` and the resolution of `alrt train --data`: documents → tokenizer → shards + meta.json.

A prepared folder holds `train_000000.bin`…, `val_000000.bin`…, `tokenizer.model` and `meta.json`. It is built in
a temporary sibling folder and renamed into place, so an interrupted prepare never leaves a half-written dataset.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from alrt_core.data.corpus import SHAKESPEARE_VALIDATION_TITLES, shakespeare_split
from alrt_core.data.documents import Document, read_documents, split_documents
from alrt_core.data.shards import list_shards, write_shard
from alrt_core.data.tokenizer import Tokenizer, train_tokenizer
from alrt_core.errors import UserError
from alrt_core.fileio import atomic_write_text

META_VERSION = 1
ENCODE_BATCH_DOCUMENTS = 64


@dataclass
class DatasetInfo:
    root: Path
    train_files: list[Path]
    val_files: list[Path]
    tokenizer_path: Path
    vocab_size: int
    meta: dict[str, Any] = field(default_factory=dict)


def default_cache_dir() -> Path:
    return Path(os.environ.get("ALRT_CACHE", Path.home() / ".cache" / "alrt"))


def _encode_split(
    tokenizer: Tokenizer, documents: list[Document], out_dir: Path, split: str, shard_tokens: int, progress: bool
) -> tuple[int, int]:
    """Write BOS-separated token shards of one split; returns (tokens, UTF-8 bytes of the documents)."""
    pending: list[np.ndarray] = []
    pending_count, shard_index, total_tokens = 0, 0, 0

    def flush() -> None:
        nonlocal pending, pending_count, shard_index
        write_shard(out_dir / f"{split}_{shard_index:06d}.bin", np.concatenate(pending))
        pending, pending_count, shard_index = [], 0, shard_index + 1

    columns = (TextColumn(f"tokenizing {split}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, disable=not progress, transient=True) as bar:
        task = bar.add_task(split, total=len(documents))
        for start in range(0, len(documents), ENCODE_BATCH_DOCUMENTS):
            batch = documents[start : start + ENCODE_BATCH_DOCUMENTS]
            for ids in tokenizer.encode_batch([doc.text for doc in batch]):
                tokens = np.asarray([tokenizer.bos_id, *ids], dtype=np.uint16)
                pending.append(tokens)
                pending_count += tokens.size
                total_tokens += tokens.size
                if pending_count >= shard_tokens:
                    flush()
            bar.advance(task, len(batch))
    if pending:
        flush()
    return total_tokens, sum(len(doc.text.encode("utf-8")) for doc in documents)


def _build(
    train_docs: list[Document],
    val_docs: list[Document],
    out_dir: Path,
    *,
    vocab_size: int,
    tokenizer: Path | None,
    golf_normalization: bool,
    shard_tokens: int,
    progress: bool,
    sources: list[str],
) -> DatasetInfo:
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        model_path = staging / "tokenizer.model"
        if tokenizer is not None:
            loaded = Tokenizer.load(tokenizer)  # validates before copying
            shutil.copyfile(tokenizer, model_path)
        else:
            train_tokenizer(train_docs, model_path, vocab_size=vocab_size, golf_normalization=golf_normalization)
            loaded = Tokenizer.load(model_path)
        train_tokens, train_bytes = _encode_split(loaded, train_docs, staging, "train", shard_tokens, progress)
        val_tokens, val_bytes = _encode_split(loaded, val_docs, staging, "val", shard_tokens, progress)
        meta = {
            "format_version": META_VERSION, "vocab_size": loaded.vocab_size, "bos_id": loaded.bos_id,
            "lossless": not loaded.adds_dummy_prefix and not golf_normalization,
            "golf_normalization": golf_normalization, "tokenizer_reused": tokenizer is not None,
            "train_documents": len(train_docs), "val_documents": len(val_docs),
            "train_tokens": train_tokens, "val_tokens": val_tokens, "train_bytes": train_bytes, "val_bytes": val_bytes,
            "val_titles": [doc.title for doc in val_docs][:100], "sources": sources,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        atomic_write_text(staging / "meta.json", json.dumps(meta, indent=2) + "\n")
        # Swap the finished folder into place; an existing dataset there is replaced only now.
        if out_dir.exists():
            retired = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old.", dir=out_dir.parent))
            os.replace(out_dir, retired / out_dir.name)
            os.replace(staging, out_dir)
            shutil.rmtree(retired, ignore_errors=True)
        else:
            os.replace(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return load_dataset(out_dir)


def prepare_dataset(
    inputs: list[Path],
    out_dir: Path,
    vocab_size: int = 1024,
    tokenizer: Path | None = None,
    val_inputs: list[Path] | None = None,
    val_fraction: float = 0.05,
    golf_normalization: bool = False,
    shard_tokens: int = 100_000_000,
    seed: int = 1337,
    progress: bool = True,
) -> DatasetInfo:
    """Read, split by document, train a tokenizer on the training documents only, tokenize and shard."""
    documents = read_documents([Path(p) for p in inputs])
    if val_inputs:
        train_docs, val_docs = documents, read_documents([Path(p) for p in val_inputs])
    else:
        train_docs, val_docs = split_documents(documents, val_fraction, seed)
    return _build(
        train_docs, val_docs, out_dir, vocab_size=vocab_size, tokenizer=tokenizer, golf_normalization=golf_normalization,
        shard_tokens=shard_tokens, progress=progress, sources=[str(p) for p in [*inputs, *(val_inputs or [])]],
    )


def load_dataset(root: Path, tokenizer: Path | str | None = None) -> DatasetInfo:
    """A folder of shards: ours (with tokenizer.model) or parameter golf's (tokenizer given separately)."""
    root = Path(root)
    train_files, val_files = list_shards(root, "train"), list_shards(root, "val")
    if not train_files or not val_files:
        raise UserError(f"{root}: needs train_*.bin and val_*.bin shards (or fineweb_train_*/fineweb_val_*)")
    tokenizer_path = Path(tokenizer) if tokenizer else root / "tokenizer.model"
    if not tokenizer_path.is_file():
        raise UserError(f"{root}: no tokenizer.model in the folder; pass --tokenizer PATH")
    meta_path = root / "meta.json"
    meta = json.loads(meta_path.read_text(encoding="utf-8")) if meta_path.is_file() else {}
    vocab = Tokenizer.load(tokenizer_path).vocab_size
    return DatasetInfo(root, train_files, val_files, tokenizer_path, vocab, meta)


def _is_valid_cache(folder: Path) -> bool:
    meta = folder / "meta.json"
    if not meta.is_file():
        return False
    try:
        return json.loads(meta.read_text(encoding="utf-8")).get("format_version") == META_VERSION
    except json.JSONDecodeError:
        return False


def _content_hash(paths: list[Path]) -> str:
    digest = hashlib.sha256()
    for path in paths:
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for file in files:
            digest.update(str(file.relative_to(path) if path.is_dir() else file.name).encode())
            digest.update(file.read_bytes())
    return digest.hexdigest()[:12]


def resolve_dataset(
    data: str | None, tokenizer: str | None, cache_dir: Path, vocab_size: int = 1024, progress: bool = True
) -> DatasetInfo:
    """What `alrt train --data` means: embedded corpus (None), a shard folder, or raw text prepared into the cache."""
    if data is None:
        folder = cache_dir / f"shakespeare-v{vocab_size}"
        if _is_valid_cache(folder):
            return load_dataset(folder)
        train_docs, val_docs = shakespeare_split()
        return _build(
            train_docs, val_docs, folder, vocab_size=vocab_size, tokenizer=None, golf_normalization=False,
            shard_tokens=100_000_000, progress=progress,
            sources=[f"embedded:shakespeare (validation: {', '.join(SHAKESPEARE_VALIDATION_TITLES)})"],
        )
    path = Path(data)
    if not path.exists():
        raise UserError(f"data not found: {path}")
    if path.is_dir() and list_shards(path, "train"):
        return load_dataset(path, tokenizer)
    hashed = [path, Path(tokenizer)] if tokenizer else [path]
    folder = cache_dir / f"{path.stem}-{_content_hash(hashed)}-v{vocab_size}"
    if _is_valid_cache(folder):
        return load_dataset(folder)
    return prepare_dataset(
        [path], folder, vocab_size=vocab_size, tokenizer=Path(tokenizer) if tokenizer else None, progress=progress
    )
