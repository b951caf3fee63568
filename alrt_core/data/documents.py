"""Reading user inputs into documents, and holding out whole documents for validation.

Inputs are `.txt` files (one document each), `.jsonl` files (one document per line, a string field `text`, an
optional string `title`), or folders searched recursively for both. Non-UTF-8 input is an error naming the file
and the byte offset of the first bad byte: silently replacing bytes would change the text bpb is counted on.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from alrt_core.errors import UserError

TEXT_SUFFIXES = (".txt", ".jsonl")
UTF8_BOM = "\ufeff"
# Where a single document may be cut, best first: the start of a paragraph (after a blank line), of a line.
PARAGRAPH_START = re.compile(r"\n(?:[ \t]*\n)+")  # one or more blank lines; the cut goes after them
LINE_START = re.compile(r"\n")


@dataclass(frozen=True)
class Document:
    title: str
    text: str


def _decode_utf8(path: Path, data: bytes) -> str:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        raise UserError(f"{path}: not valid UTF-8 at byte {error.start} (line {line})") from None
    # A byte-order mark is an encoding marker some editors add, not part of the text.
    return text.removeprefix(UTF8_BOM)


def _read_jsonl(path: Path) -> list[Document]:
    documents = []
    # Split on "\n" only: str.splitlines would also break on U+2028 and friends, which JSON strings may hold raw.
    for number, line in enumerate(_decode_utf8(path, path.read_bytes()).split("\n"), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise UserError(f"{path}:{number}: not valid JSON ({error.msg} at column {error.colno})") from None
        if not isinstance(record, dict):
            raise UserError(f"{path}:{number}: expected a JSON object with a 'text' field")
        if not isinstance(record.get("text"), str):
            raise UserError(f"{path}:{number}: JSON line has no string field 'text'")
        title = record.get("title")
        title = title if isinstance(title, str) else f"{path.name}:{number}"
        documents.append(Document(title=title, text=record["text"]))
    return documents


def _is_hidden(path: Path, root: Path) -> bool:
    return any(part.startswith(".") for part in path.relative_to(root).parts)


def input_files(path: Path) -> list[Path]:
    """The text files an input stands for: itself, or the .txt/.jsonl files under a folder (sorted, hidden skipped)."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"input not found: {path}")
    if path.is_dir():
        return sorted(
            file for file in path.rglob("*")
            if file.is_file() and file.suffix.lower() in TEXT_SUFFIXES and not _is_hidden(file, path)
        )
    if path.suffix.lower() not in TEXT_SUFFIXES:
        raise UserError(f"{path}: unsupported input (expected .txt, .jsonl or a folder of them)")
    return [path]


def read_documents(paths: list[Path]) -> list[Document]:
    """Every non-empty document of the inputs, in a deterministic order (inputs as given, folders sorted)."""
    documents: list[Document] = []
    for path in paths:
        for file in input_files(Path(path)):
            if file.suffix.lower() == ".jsonl":
                documents.extend(_read_jsonl(file))
            else:
                documents.append(Document(title=file.name, text=_decode_utf8(file, file.read_bytes())))
    # Whitespace-only documents carry nothing to learn and would only add BOS tokens.
    documents = [doc for doc in documents if doc.text.strip()]
    if not documents:
        raise UserError(f"no non-empty documents in {', '.join(str(p) for p in paths) or 'the inputs'}")
    return documents


def split_documents(documents: list[Document], val_fraction: float, seed: int) -> tuple[list[Document], list[Document]]:
    """Hold out whole documents (never lines) for validation, chosen by a seeded shuffle; order is kept in each part.

    With two or more documents both parts get at least one. The split is by position, so documents with equal
    titles or texts are still never on both sides. A single document (one book in one .txt, the first thing most
    users try) is cut in two instead: see `split_single_document`.
    """
    if not 0.0 < val_fraction < 1.0:
        raise UserError(f"validation fraction must be between 0 and 1 (exclusive), got {val_fraction}")
    if len(documents) == 1:
        train_part, val_part = split_single_document(documents[0], val_fraction)
        return [train_part], [val_part]
    order = np.random.default_rng(seed).permutation(len(documents))
    count = min(len(documents) - 1, max(1, round(val_fraction * len(documents))))
    held_out = set(order[:count].tolist())
    train = [doc for index, doc in enumerate(documents) if index not in held_out]
    val = [doc for index, doc in enumerate(documents) if index in held_out]
    return train, val


def split_single_document(document: Document, val_fraction: float) -> tuple[Document, Document]:
    """Cut one document into a training head and a validation tail of about `val_fraction` of its characters.

    The cut is the paragraph start (after a blank line) nearest that point, else the nearest line start, so no
    paragraph is split between the parts when the text has paragraphs. The two texts concatenate to the original
    exactly (every byte is counted once). A text with no line break to cut at is refused.
    """
    text = document.text
    target = round(len(text) * (1.0 - val_fraction))
    for pattern, unit in ((PARAGRAPH_START, "paragraph"), (LINE_START, "line")):
        cuts = [match.end() for match in pattern.finditer(text)
                if text[: match.end()].strip() and text[match.end():].strip()]
        if cuts:
            cut = min(cuts, key=lambda position: abs(position - target))
            return (Document(f"{document.title} (train part)", text[:cut]),
                    Document(f"{document.title} (validation part, from {unit} at character {cut})", text[cut:]))
    raise UserError(
        f"only one document ({document.title}) and no line break to split it at: cannot hold out validation text; "
        "give validation text with --val-input"
    )
