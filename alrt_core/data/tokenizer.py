"""SentencePiece BPE tokenizer: training, loading, and the byte accounting behind bits per byte.

By default the tokenizer is lossless: identity normalisation, no whitespace collapsing and no dummy prefix, so
newlines and runs of spaces survive encode → decode and bpb is counted on the raw UTF-8 bytes. The parameter-golf
settings (nmt_nfkc, collapsed whitespace, dummy prefix) are available as `golf_normalization` for compatibility.
"""

from __future__ import annotations

import io
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import sentencepiece as spm

from alrt_core.data.documents import Document
from alrt_core.errors import UserError
from alrt_core.fileio import atomic_write_bytes

BOS_ID = 1  # shards put BOS before every document
UNK_ID = 0
TRAINING_CHUNK_CHARS = 4096  # sentencepiece trains on "sentences"; chunks keep newlines inside them
TRAINING_CHAR_BUDGET = 60_000_000  # larger corpora are subsampled for tokenizer training (~1 min on 2 cores)


def _training_chunks(documents: list[Document]) -> Iterator[str]:
    """Paragraph-aligned chunks of every document, evenly subsampled to the character budget."""
    total = sum(len(doc.text) for doc in documents)
    keep_every = max(1, -(-total // TRAINING_CHAR_BUDGET))
    index = 0
    for doc in documents:
        chunk = ""
        for paragraph in re.split(r"(?<=\n\n)", doc.text):
            if chunk and len(chunk) + len(paragraph) > TRAINING_CHUNK_CHARS:
                if index % keep_every == 0:
                    yield chunk
                index += 1
                chunk = ""
            chunk += paragraph[: TRAINING_CHUNK_CHARS * 4]
        if chunk:
            if index % keep_every == 0:
                yield chunk
            index += 1


def train_tokenizer(documents: list[Document], out_path: Path, vocab_size: int = 1024, golf_normalization: bool = False) -> Path:
    """Train a BPE model with byte fallback on `documents` and write it atomically to `out_path`."""
    if not 260 <= vocab_size <= 65536:
        raise UserError(f"vocab size must be in [260, 65536] (byte fallback needs 256 ids; shards are uint16), got {vocab_size}")
    options = dict(
        model_type="bpe", vocab_size=vocab_size, byte_fallback=True, character_coverage=0.9995,  # rare characters go to byte pieces
        unk_id=UNK_ID, bos_id=BOS_ID, eos_id=-1, pad_id=-1, max_sentence_length=1 << 20,
        hard_vocab_limit=False, num_threads=2, minloglevel=2,
    )
    if golf_normalization:
        options.update(normalization_rule_name="nmt_nfkc", remove_extra_whitespaces=True, add_dummy_prefix=True)
    else:
        options.update(normalization_rule_name="identity", remove_extra_whitespaces=False, add_dummy_prefix=False)
    buffer = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(sentence_iterator=_training_chunks(documents), model_writer=buffer, **options)
    except RuntimeError as error:
        detail = str(error).strip().splitlines()[0].split("] ")[-1]
        needed = re.search(r"(\d+) vs (\d+)", detail) if "required_chars" in detail else None
        if needed:
            detail = f"this text needs more than {needed.group(2)} ids (byte pieces + its characters); use a larger vocab size"
        raise UserError(f"tokenizer training failed (vocab size {vocab_size}): {detail}") from None
    atomic_write_bytes(out_path, buffer.getvalue())
    return out_path


class Tokenizer:
    """A loaded sentencepiece model plus its per-token byte tables."""

    def __init__(self, proto: bytes, source: str = "<memory>") -> None:
        self.source = source
        self._proto = proto
        try:
            self.sp = spm.SentencePieceProcessor(model_proto=proto)
        except Exception:  # noqa: BLE001 - sentencepiece raises several types for a bad proto
            raise UserError(f"{source}: not a sentencepiece model") from None
        # A dummy-prefix model turns "a" into "▁a"; asking it avoids depending on protobuf to read the spec.
        first_piece = self.sp.encode("a", out_type=str)[0]
        self.adds_dummy_prefix = first_piece.startswith("▁")
        self.vocab_size = int(self.sp.vocab_size())
        self.bos_id = int(self.sp.bos_id())
        if self.bos_id < 0:
            raise UserError(f"{source}: tokenizer has no BOS token (documents are separated by BOS)")
        self.base_bytes, self.has_leading_space, self.is_boundary = self._byte_tables()

    @classmethod
    def load(cls, path: Path | str) -> Tokenizer:
        path = Path(path)
        if not path.is_file():
            raise UserError(f"tokenizer not found: {path}")
        return cls(path.read_bytes(), source=str(path))

    def model_bytes(self) -> bytes:
        return self._proto

    def encode(self, text: str) -> list[int]:
        return self.sp.encode(text)

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return self.sp.encode(texts, num_threads=2)

    def decode(self, ids: list[int] | np.ndarray) -> str:
        return self.sp.decode([int(i) for i in ids])

    def _byte_tables(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        sp, size = self.sp, self.vocab_size
        base = np.zeros(size, dtype=np.int64)
        leading = np.zeros(size, dtype=bool)
        boundary = np.ones(size, dtype=bool)
        for token in range(size):
            if sp.is_control(token) or sp.is_unknown(token) or sp.is_unused(token):
                continue
            boundary[token] = False
            if sp.is_byte(token):
                base[token] = 1
                continue
            piece = sp.id_to_piece(token)
            if piece.startswith("▁"):
                leading[token] = True
                piece = piece[1:]
            base[token] = len(piece.replace("▁", " ").encode("utf-8"))
        return base, leading, boundary

    def count_bytes(self, previous: np.ndarray, targets: np.ndarray) -> int:
        """UTF-8 bytes that `targets` add to the decoded text, each following the matching `previous` token.

        A leading "▁" is one space byte, except, for dummy-prefix (golf) tokenizers, right after a boundary token
        (BOS), where sentencepiece's decode drops it.
        """
        previous = np.asarray(previous, dtype=np.int64)
        targets = np.asarray(targets, dtype=np.int64)
        space = self.has_leading_space[targets]
        if self.adds_dummy_prefix:
            space = space & ~self.is_boundary[previous]
        return int(self.base_bytes[targets].sum() + space.sum())
