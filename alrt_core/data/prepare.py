"""`alrt data prepare` and the resolution of `alrt train --data`: documents → tokenizer → shards + meta.json.

A prepared folder holds `train_000000.bin`…, `val_000000.bin`…, `tokenizer.model` and `meta.json`. It is built
in a temporary sibling folder and renamed into place, so an interrupted prepare never leaves a half-written
dataset. An existing output folder is replaced only if it is empty or is itself a prepared dataset (it holds
only the files listed above); a folder with anything else in it is refused rather than deleted.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeRemainingColumn

from alrt_core.data.corpus import SHAKESPEARE_VALIDATION_TITLES, shakespeare_digest, shakespeare_split
from alrt_core.data.documents import Document, input_files, read_documents, split_documents
from alrt_core.data.shards import list_shards, read_shard, write_shard
from alrt_core.data.tokenizer import MAX_VOCAB_SIZE, Tokenizer, train_tokenizer_with_settings
from alrt_core.errors import UserError
from alrt_core.fileio import atomic_write_text

META_FORMAT_VERSION = 3  # bump when tokenizer training or sharding changes, so caches are rebuilt
ENCODE_BATCH_CHARS = 4_000_000  # documents are encoded in batches of about this many characters
TOKENIZER_FILE = "tokenizer.model"
META_FILE = "meta.json"


@dataclass
class DatasetInfo:
    root: Path
    train_files: list[Path]
    val_files: list[Path]
    tokenizer_path: Path
    vocab_size: int
    meta: dict[str, Any] = field(default_factory=dict)


def default_cache_dir() -> Path:
    return Path(os.environ.get("ALRT_CACHE") or Path.home() / ".cache" / "alrt")


# -- tokenizing into shards ---------------------------------------------------------------------------------------


def _document_batches(documents: Sequence[Document]) -> Iterator[list[Document]]:
    batch: list[Document] = []
    size = 0
    for doc in documents:
        batch.append(doc)
        size += len(doc.text)
        if size >= ENCODE_BATCH_CHARS:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def _write_split(
    tokenizer: Tokenizer, documents: Sequence[Document], folder: Path, split: str, shard_tokens: int, progress: Progress
) -> tuple[int, int]:
    """Write `BOS doc BOS doc ...` into shards of exactly `shard_tokens` (the last may be shorter).

    Documents may continue across a shard boundary, as in parameter golf: the shards form one stream.
    Returns (tokens written, UTF-8 bytes of the documents).
    """
    buffer = np.empty(shard_tokens, dtype=np.uint16)  # untouched pages cost no memory, so a small split is cheap
    filled, shard_index, total_tokens, total_bytes = 0, 0, 0, 0
    task = progress.add_task(f"tokenizing {split}", total=sum(len(doc.text) for doc in documents))
    for batch in _document_batches(documents):
        encoded = tokenizer.encode_documents([doc.text for doc in batch])
        stream = np.empty(sum(ids.size + 1 for ids in encoded), dtype=np.uint16)
        offset = 0
        for ids in encoded:
            stream[offset] = tokenizer.bos_id
            stream[offset + 1 : offset + 1 + ids.size] = ids
            offset += ids.size + 1
        total_tokens += stream.size
        total_bytes += sum(len(doc.text.encode("utf-8")) for doc in batch)
        while stream.size:
            take = min(stream.size, shard_tokens - filled)
            buffer[filled : filled + take] = stream[:take]
            filled, stream = filled + take, stream[take:]
            if filled == shard_tokens:
                write_shard(folder / f"{split}_{shard_index:06d}.bin", buffer)
                filled, shard_index = 0, shard_index + 1
        progress.advance(task, sum(len(doc.text) for doc in batch))
    if filled or shard_index == 0:
        write_shard(folder / f"{split}_{shard_index:06d}.bin", buffer[:filled])
    return total_tokens, total_bytes


# -- the output folder ---------------------------------------------------------------------------------------------


def _is_dataset_file(name: str) -> bool:
    return name in (TOKENIZER_FILE, META_FILE) or (name.endswith(".bin") and name.startswith(("train_", "val_")))


def _check_replaceable(out_dir: Path) -> None:
    """Refuse to overwrite a file, or a folder holding anything a prepare did not write."""
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"output {out_dir} exists and is not a folder")
    if out_dir.is_dir():
        foreign = sorted(entry.name for entry in out_dir.iterdir() if not _is_dataset_file(entry.name))
        if foreign:
            raise UserError(
                f"output folder {out_dir} holds files that are not a prepared dataset ({', '.join(foreign[:3])}); "
                "choose a new or empty folder"
            )


def _move_into_place(staging: Path, out_dir: Path) -> None:
    _check_replaceable(out_dir)  # again: the folder may have changed while we were tokenizing
    if out_dir.is_dir() and not any(out_dir.iterdir()):
        out_dir.rmdir()
    if not out_dir.exists():
        os.replace(staging, out_dir)
        return
    # Swap the old dataset out and the new one in; the old one is only deleted once the new one is in place.
    retired = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old.", dir=out_dir.parent))
    os.replace(out_dir, retired / out_dir.name)
    os.replace(staging, out_dir)
    shutil.rmtree(retired, ignore_errors=True)


def _build(
    train_docs: Sequence[Document],
    val_docs: Sequence[Document],
    out_dir: Path,
    *,
    vocab_size: int,
    tokenizer: Path | None,
    golf_normalization: bool,
    shard_tokens: int,
    progress: bool,
    sources: list[str],
    extra_meta: dict[str, Any] | None = None,
) -> DatasetInfo:
    out_dir = Path(out_dir)
    _check_replaceable(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".partial", dir=out_dir.parent))
    columns = (
        SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
        TimeRemainingColumn(),
    )
    try:
        with Progress(*columns, disable=not progress, transient=True) as bar:
            model_path = staging / TOKENIZER_FILE
            if tokenizer is not None:
                loaded = Tokenizer.load(tokenizer)  # validates (proto, BOS, uint16 vocab) before copying
                shutil.copyfile(tokenizer, model_path)
                settings: dict[str, Any] = {"trained": False, "source": str(tokenizer)}
            else:
                task = bar.add_task("training tokenizer", total=None)
                options = train_tokenizer_with_settings(train_docs, model_path, vocab_size, golf_normalization)
                bar.remove_task(task)
                loaded = Tokenizer.load(model_path)
                settings = {"trained": True, "options": options}
            train_tokens, train_bytes = _write_split(loaded, train_docs, staging, "train", shard_tokens, bar)
            val_tokens, val_bytes = _write_split(loaded, val_docs, staging, "val", shard_tokens, bar)
        meta = {
            "format_version": META_FORMAT_VERSION,
            "vocab_size": loaded.vocab_size,
            "bos_id": loaded.bos_id,
            "eos_id": loaded.eos_id,
            "lossless": loaded.lossless,
            "tokenizer_settings": {**settings, "normalizer": loaded.normalizer,
                          "sha256": hashlib.sha256(loaded.model_bytes()).hexdigest()},
            "train_documents": len(train_docs),
            "val_documents": len(val_docs),
            "train_tokens": train_tokens,
            "val_tokens": val_tokens,
            "train_bytes": train_bytes,
            "val_bytes": val_bytes,
            "val_titles": [doc.title for doc in val_docs][:100],
            "shard_tokens": shard_tokens,
            "sources": sources,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            **(extra_meta or {}),
        }
        atomic_write_text(staging / META_FILE, json.dumps(meta, indent=2, ensure_ascii=False) + "\n")
        _move_into_place(staging, out_dir)
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
    """Read, split by document, train a tokenizer on the training documents only (or reuse one), shard."""
    if vocab_size > MAX_VOCAB_SIZE:
        raise UserError(f"vocab size {vocab_size} does not fit uint16 shards (max {MAX_VOCAB_SIZE})")
    if shard_tokens < 1:
        raise UserError(f"shard size must be at least 1 token, got {shard_tokens}")
    _check_replaceable(Path(out_dir))  # fail before the slow part
    documents = read_documents([Path(p) for p in inputs])
    if val_inputs:
        train_docs, val_docs = documents, read_documents([Path(p) for p in val_inputs])
    else:
        train_docs, val_docs = split_documents(documents, val_fraction, seed)
    return _build(
        train_docs, val_docs, out_dir, vocab_size=vocab_size, tokenizer=Path(tokenizer) if tokenizer else None,
        golf_normalization=golf_normalization, shard_tokens=shard_tokens, progress=progress,
        sources=[str(p) for p in inputs] + [f"val:{p}" for p in val_inputs or []],
        extra_meta={"split": {"method": "val_inputs"} if val_inputs
                    else {"method": "single_document" if len(documents) == 1 else "fraction",
                          "val_fraction": val_fraction, "seed": seed}},
    )


def load_dataset(root: Path, tokenizer: Path | str | None = None) -> DatasetInfo:
    """A folder of shards: ours (with tokenizer.model) or parameter golf's (tokenizer given separately)."""
    root = Path(root)
    train_files, val_files = list_shards(root, "train"), list_shards(root, "val")
    if not train_files or not val_files:
        missing = " and ".join(split for split, files in (("train", train_files), ("val", val_files)) if not files)
        raise UserError(
            f"{root}: no {missing} shards (expected train_*.bin and val_*.bin, or fineweb_train_*/fineweb_val_*)"
        )
    tokenizer_path = Path(tokenizer) if tokenizer else root / TOKENIZER_FILE
    if not tokenizer_path.is_file():
        raise UserError(
            f"tokenizer not found: {tokenizer_path}" if tokenizer
            else f"{root}: no tokenizer.model in the folder; pass --tokenizer PATH"
        )
    meta_path = root / META_FILE
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8")) if meta_path.is_file() else {}
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise UserError(f"{meta_path}: not valid JSON") from None
    vocab = Tokenizer.load(tokenizer_path).vocab_size
    return DatasetInfo(root, train_files, val_files, tokenizer_path, vocab, meta)


# -- `--data` resolution and the cache ----------------------------------------------------------------------------


def _cached(folder: Path, **expected: Any) -> DatasetInfo | None:
    """The dataset in `folder` if a complete one of this format (and `expected` meta values) is there."""
    try:
        meta = json.loads((folder / META_FILE).read_text(encoding="utf-8"))
        if meta.get("format_version") != META_FORMAT_VERSION or any(meta.get(k) != v for k, v in expected.items()):
            return None
        info = load_dataset(folder)
        # Headers are cheap to check and catch a shard truncated by a full disk or a killed copy.
        for path in info.train_files + info.val_files:
            read_shard(path)
        return info
    except (OSError, ValueError, UserError):
        return None


def _content_hash(path: Path, tokenizer: Path | None) -> str:
    """Hash of the text files the input stands for (names and bytes) and of the tokenizer, if one is given."""
    digest = hashlib.sha256()
    for file in input_files(path):
        digest.update(str(file.relative_to(path) if path.is_dir() else file.name).encode("utf-8") + b"\0")
        digest.update(hashlib.sha256(file.read_bytes()).digest())
    if tokenizer is not None:
        digest.update(b"tokenizer\0" + hashlib.sha256(tokenizer.read_bytes()).digest())
    return digest.hexdigest()[:12]


def resolve_dataset(
    data: str | None, tokenizer: str | None, cache_dir: Path, vocab_size: int = 1024, progress: bool = True
) -> DatasetInfo:
    """What `alrt train --data` means: the embedded corpus (None), a shard folder, or raw text (prepared and cached)."""
    cache_dir = Path(cache_dir)
    if data is None:
        folder = cache_dir / f"shakespeare-v{vocab_size}"
        digest = shakespeare_digest()
        cached = _cached(folder, corpus_sha256=digest)
        if cached is not None:
            return cached
        train_docs, val_docs = shakespeare_split()
        return _build(
            train_docs, val_docs, folder, vocab_size=vocab_size, tokenizer=None, golf_normalization=False,
            shard_tokens=100_000_000, progress=progress,
            extra_meta={"corpus_sha256": digest, "split": {"method": "titles"}},
            sources=[f"embedded:shakespeare (validation: {', '.join(SHAKESPEARE_VALIDATION_TITLES)})"],
        )
    path = Path(data).expanduser()
    if not path.exists():
        raise UserError(f"data not found: {path}")
    tokenizer_path = Path(tokenizer).expanduser() if tokenizer else None
    if path.is_dir() and (list_shards(path, "train") or list_shards(path, "val")):
        return load_dataset(path, tokenizer_path)
    if tokenizer_path is not None and not tokenizer_path.is_file():
        raise UserError(f"tokenizer not found: {tokenizer_path}")
    name = path.name if path.is_dir() else path.stem
    folder = cache_dir / f"{name}-{_content_hash(path, tokenizer_path)}-v{vocab_size}"
    cached = _cached(folder)
    if cached is not None:
        return cached
    return prepare_dataset([path], folder, vocab_size=vocab_size, tokenizer=tokenizer_path, progress=progress)
