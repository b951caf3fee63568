"""Reading user inputs into documents: .txt files, .jsonl files with a `text` field, or folders of them.

Non-UTF-8 input is an error that names the file and the byte offset of the first bad byte: silently replacing
bytes would change the text the bpb is counted on.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from alrt_core.errors import UserError

TEXT_SUFFIXES = (".txt", ".jsonl")


@dataclass(frozen=True)
class Document:
    title: str
    text: str


def _decode(path: Path, data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise UserError(f"{path}: not valid UTF-8 at byte {error.start}") from None


def _read_jsonl(path: Path) -> list[Document]:
    documents = []
    for number, line in enumerate(_decode(path, path.read_bytes()).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            raise UserError(f"{path}:{number}: not a JSON object") from None
        if not isinstance(record, dict) or not isinstance(record.get("text"), str):
            raise UserError(f"{path}:{number}: JSON line has no string field 'text'")
        documents.append(Document(title=str(record.get("title", f"{path.name}:{number}")), text=record["text"]))
    return documents


def _files(path: Path) -> list[Path]:
    if not path.exists():
        raise UserError(f"input not found: {path}")
    if path.is_dir():
        return sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in TEXT_SUFFIXES)
    if path.suffix not in TEXT_SUFFIXES:
        raise UserError(f"{path}: unsupported input (expected .txt, .jsonl or a folder of them)")
    return [path]


def read_documents(paths: list[Path]) -> list[Document]:
    """Every non-empty document of the inputs, in a deterministic order."""
    documents: list[Document] = []
    for path in paths:
        for file in _files(Path(path)):
            if file.suffix == ".jsonl":
                documents.extend(_read_jsonl(file))
            else:
                documents.append(Document(title=file.name, text=_decode(file, file.read_bytes())))
    documents = [doc for doc in documents if doc.text.strip()]
    if not documents:
        raise UserError(f"no non-empty documents in {', '.join(str(p) for p in paths)}")
    return documents


def split_documents(documents: list[Document], val_fraction: float, seed: int) -> tuple[list[Document], list[Document]]:
    """Hold out whole documents (never lines) for validation, chosen by a seeded shuffle."""
    if len(documents) < 2:
        raise UserError("need at least two documents to split train/validation; give validation text with --val-input")
    if not 0.0 < val_fraction < 1.0:
        raise UserError(f"validation fraction must be in (0, 1), got {val_fraction}")
    order = np.random.default_rng(seed).permutation(len(documents))
    count = min(len(documents) - 1, max(1, round(val_fraction * len(documents))))
    held_out = set(order[:count].tolist())
    train = [doc for index, doc in enumerate(documents) if index not in held_out]
    val = [doc for index, doc in enumerate(documents) if index in held_out]
    return train, val
