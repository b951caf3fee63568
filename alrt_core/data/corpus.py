"""The embedded default corpus: 42 public-domain works of Shakespeare (Project Gutenberg texts), xz-compressed."""

from __future__ import annotations

import json
import lzma
from importlib import resources

from alrt_core.data.documents import Document

# Works held out for validation: a tragedy, a comedy and the sonnets (verse and prose, ~6% of the bytes).
SHAKESPEARE_VALIDATION_TITLES = ("Macbeth", "Twelfth Night", "Sonnets")


def load_shakespeare() -> list[Document]:
    raw = resources.files("alrt_core.data").joinpath("corpus/shakespeare.jsonl.xz").read_bytes()
    return [Document(title=r["title"], text=r["text"]) for r in map(json.loads, lzma.decompress(raw).decode("utf-8").splitlines())]


def shakespeare_split() -> tuple[list[Document], list[Document]]:
    """(train, validation) by work: the validation works are never seen in training."""
    documents = load_shakespeare()
    train = [doc for doc in documents if doc.title not in SHAKESPEARE_VALIDATION_TITLES]
    val = [doc for doc in documents if doc.title in SHAKESPEARE_VALIDATION_TITLES]
    return train, val
