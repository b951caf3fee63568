"""Data: documents, the embedded corpus, the tokenizer and its byte accounting, shards, dataset preparation."""

from __future__ import annotations

from alrt_core.data.corpus import SHAKESPEARE_VALIDATION_TITLES, load_shakespeare, shakespeare_split
from alrt_core.data.documents import Document, read_documents, split_documents
from alrt_core.data.prepare import DatasetInfo, default_cache_dir, load_dataset, prepare_dataset, resolve_dataset
from alrt_core.data.shards import list_shards, read_shard, write_shard
from alrt_core.data.tokenizer import Tokenizer, train_tokenizer

__all__ = [
    "SHAKESPEARE_VALIDATION_TITLES",
    "DatasetInfo",
    "Document",
    "Tokenizer",
    "default_cache_dir",
    "list_shards",
    "load_dataset",
    "load_shakespeare",
    "prepare_dataset",
    "read_documents",
    "read_shard",
    "resolve_dataset",
    "shakespeare_split",
    "split_documents",
    "train_tokenizer",
    "write_shard",
]
