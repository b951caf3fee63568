"""The embedded default corpus: 42 public-domain works of Shakespeare (Project Gutenberg texts), xz-compressed.

Read through importlib.resources so it works from a wheel or zip install as well as from a source checkout.
"""

from __future__ import annotations

import hashlib
import json
import lzma
from functools import lru_cache
from importlib import resources

from alrt_core.data.documents import Document

CORPUS_RESOURCE = "corpus/shakespeare.jsonl.xz"

# Works held out for validation: a tragedy, a comedy and the sonnets (verse and prose, ~6% of the bytes).
SHAKESPEARE_VALIDATION_TITLES = ("Macbeth", "Twelfth Night", "Sonnets")


@lru_cache(maxsize=1)
def _compressed_corpus() -> bytes:
    return resources.files("alrt_core.data").joinpath(CORPUS_RESOURCE).read_bytes()


def shakespeare_digest() -> str:
    """A short hash of the embedded corpus, so a cache prepared from an older corpus is noticed."""
    return hashlib.sha256(_compressed_corpus()).hexdigest()[:16]


def load_shakespeare() -> list[Document]:
    lines = lzma.decompress(_compressed_corpus()).decode("utf-8").split("\n")
    return [Document(title=record["title"], text=record["text"]) for record in map(json.loads, filter(None, lines))]


def shakespeare_split() -> tuple[list[Document], list[Document]]:
    """(train, validation) by work: the validation works are never seen in training."""
    documents = load_shakespeare()
    train = [doc for doc in documents if doc.title not in SHAKESPEARE_VALIDATION_TITLES]
    val = [doc for doc in documents if doc.title in SHAKESPEARE_VALIDATION_TITLES]
    if len(val) != len(SHAKESPEARE_VALIDATION_TITLES):  # a packaging mistake, not a user one
        raise RuntimeError(f"embedded corpus lacks validation works: found {[doc.title for doc in val]}")
    return train, val
