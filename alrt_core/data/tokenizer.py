"""SentencePiece BPE tokenizer: training, loading, and the byte accounting behind bits per byte.

By default the tokenizer is lossless: identity normalisation, no whitespace collapsing and no dummy prefix, so
newlines, indentation and runs of spaces survive encode → decode and bpb is counted on the raw UTF-8 bytes.
`golf_normalization=True` trains with the parameter-golf reference settings instead (nmt_nfkc, collapsed
whitespace, digits split; lossy).

Special ids follow the parameter-golf layout in both modes: pad 0, BOS 1 (shards put it before every document),
EOS 2 (never written to shards; reserved for generation), unk 3 (never emitted: byte fallback covers every
character). Then come the byte pieces <0x00>..<0xFF> and the learned pieces.
"""

from __future__ import annotations

import io
import math
import os
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import sentencepiece as spm

from alrt_core.data.documents import Document
from alrt_core.errors import UserError
from alrt_core.fileio import atomic_write_bytes

PAD_ID, BOS_ID, EOS_ID, UNK_ID = 0, 1, 2, 3
MAX_VOCAB_SIZE = 1 << 16  # shards store uint16 tokens
TRAINING_CHUNK_CHARS = 4096  # sentencepiece trains on "sentences"; chunks end at a newline so lines stay whole
TRAINING_CHAR_BUDGET = 20_000_000  # larger inputs are evenly subsampled: ~5 s of training on 2 cores
SELF_CHECK_CHUNKS = 16


def _chunks(text: str) -> Iterator[str]:
    """Pieces of ~TRAINING_CHUNK_CHARS characters, cut after a newline (else before a space) when one is near."""
    start = 0
    while start < len(text):
        stop = start + TRAINING_CHUNK_CHARS
        if stop < len(text):
            newline = text.find("\n", stop, stop + TRAINING_CHUNK_CHARS)
            space = text.rfind(" ", start + 1, stop)
            stop = newline + 1 if newline >= 0 else (space if space > start else stop)
        yield text[start:stop]
        start = stop


def training_sample(documents: Sequence[Document], char_budget: int = TRAINING_CHAR_BUDGET) -> list[str]:
    """Chunks of every document, keeping every k-th so that at most ~`char_budget` characters remain."""
    total = sum(len(doc.text) for doc in documents)
    keep_every = max(1, math.ceil(total / char_budget))
    chunks = (chunk for doc in documents for chunk in _chunks(doc.text))
    return [chunk for index, chunk in enumerate(chunks) if index % keep_every == 0]


def training_options(vocab_size: int, golf_normalization: bool, sample: Sequence[str]) -> dict[str, Any]:
    """The sentencepiece trainer settings (recorded in meta.json, so a dataset says how its tokenizer was made)."""
    options: dict[str, Any] = dict(
        model_type="bpe", vocab_size=vocab_size, byte_fallback=True,
        pad_id=PAD_ID, bos_id=BOS_ID, eos_id=EOS_ID, unk_id=UNK_ID,
        hard_vocab_limit=False,  # a small corpus may not support every merge; take the vocab it can fill
        max_sentence_length=4 * TRAINING_CHUNK_CHARS * 4,  # bytes: chunks stay within 2x the target, <= 4 bytes/char
    )
    if golf_normalization:
        # The parameter-golf data script's settings (remove_extra_whitespaces is sentencepiece's default: on).
        options.update(
            normalization_rule_name="nmt_nfkc", remove_extra_whitespaces=True, add_dummy_prefix=False,
            split_digits=True, character_coverage=0.999,
        )
        return options
    # Measured on the Shakespeare validation works at vocab 1024: plain identity BPE packs 2.47 bytes/token, while
    # making "\n" a piece of its own drops it to 2.31 (newlines can no longer merge into ".\n"-style pieces). A
    # model trained for a fixed number of tokens sees 7% more text with the former, so that is the default.
    # Covering every character (when the alphabet is small next to the vocabulary) avoids byte-fallback tokens.
    alphabet = set().union(*map(set, sample)) if sample else set()
    room = vocab_size - (4 + 256)
    options.update(
        normalization_rule_name="identity", remove_extra_whitespaces=False, add_dummy_prefix=False,
        character_coverage=1.0 if len(alphabet) <= room // 4 else 0.9995,
    )
    return options


def _training_error(error: RuntimeError, vocab_size: int) -> UserError:
    detail = str(error).strip().splitlines()[0].split("] ")[-1]
    needed = re.search(r"smaller than required_chars\. (\d+) vs (\d+)", detail)
    if needed:
        detail = f"this text needs at least {needed.group(2)} ids (special and byte pieces plus its characters)"
    return UserError(f"tokenizer training failed at vocab size {vocab_size}: {detail}; use a larger --vocab-size")


def train_tokenizer(
    docs: Sequence[Document], out_path: Path, vocab_size: int = 1024, golf_normalization: bool = False
) -> Path:
    """Train a BPE model with byte fallback on `docs` and write it atomically to `out_path`."""
    train_tokenizer_with_settings(docs, out_path, vocab_size, golf_normalization)
    return Path(out_path)


def train_tokenizer_with_settings(
    docs: Sequence[Document], out_path: Path, vocab_size: int = 1024, golf_normalization: bool = False
) -> dict[str, Any]:
    """`train_tokenizer`, returning the trainer settings it used (for meta.json)."""
    meta_pieces = 4 + 256 + (0 if golf_normalization else 1)
    if not meta_pieces < vocab_size <= MAX_VOCAB_SIZE:
        raise UserError(
            f"vocab size must be in ({meta_pieces}, {MAX_VOCAB_SIZE}] ({meta_pieces} ids are special and byte "
            f"pieces; shards store uint16), got {vocab_size}"
        )
    sample = training_sample(docs)
    if not any(chunk.strip() for chunk in sample):
        raise UserError("no text to train the tokenizer on")
    options = training_options(vocab_size, golf_normalization, sample)
    model = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(sample), model_writer=model, num_threads=os.cpu_count() or 1, minloglevel=2,
            **options,
        )
    except RuntimeError as error:
        raise _training_error(error, vocab_size) from None
    tokenizer = Tokenizer(model.getvalue(), source=str(out_path))
    if not golf_normalization:
        # Cheap guard against a sentencepiece release changing whitespace handling under us.
        for chunk in sample[:SELF_CHECK_CHUNKS]:
            if tokenizer.decode(tokenizer.encode(chunk)) != chunk:
                raise RuntimeError(f"trained tokenizer does not round-trip its training text: {chunk[:80]!r}")
    atomic_write_bytes(Path(out_path), model.getvalue())
    sampled_chars = sum(map(len, sample))
    return {**options, "golf_normalization": golf_normalization, "training_chars": sampled_chars}


# -- reading the model proto ------------------------------------------------------------------------------------
# Only the normalizer settings are needed, so a few lines of protobuf wire format stand in for the protobuf package
# (which sentencepiece does not require).

MODEL_NORMALIZER_SPEC_FIELD = 3  # ModelProto.normalizer_spec
NORMALIZER_FIELDS = {1: "name", 3: "add_dummy_prefix", 4: "remove_extra_whitespaces"}


def _varint(data: bytes, position: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        byte = data[position]
        position += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, position
        shift += 7


def _proto_fields(data: bytes) -> Iterator[tuple[int, int | bytes]]:
    """(field number, value) of each top-level field: ints for varints, bytes for length-delimited fields."""
    position = 0
    while position < len(data):
        key, position = _varint(data, position)
        number, wire_type = key >> 3, key & 7
        if wire_type == 0:
            value, position = _varint(data, position)
            yield number, value
        elif wire_type == 2:
            length, position = _varint(data, position)
            yield number, data[position : position + length]
            position += length
        elif wire_type in (1, 5):  # fixed64 / fixed32: not needed, skip
            position += 8 if wire_type == 1 else 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire_type}")


def normalizer_spec(proto: bytes) -> dict[str, Any]:
    """name, add_dummy_prefix and remove_extra_whitespaces of a serialized sentencepiece ModelProto."""
    spec: dict[str, Any] = {"name": "", "add_dummy_prefix": True, "remove_extra_whitespaces": True}  # proto defaults
    for number, value in _proto_fields(proto):
        if number == MODEL_NORMALIZER_SPEC_FIELD and isinstance(value, bytes):
            for field, inner in _proto_fields(value):
                if field in NORMALIZER_FIELDS:
                    spec[NORMALIZER_FIELDS[field]] = inner.decode("utf-8") if isinstance(inner, bytes) else bool(inner)
    return spec


class Tokenizer:
    """A loaded sentencepiece model plus its per-token byte tables (parameter-golf bpb accounting)."""

    def __init__(self, proto: bytes, source: str = "<memory>") -> None:
        self.source = source
        self._proto = bytes(proto)
        try:
            self.sp = spm.SentencePieceProcessor(model_proto=self._proto)
            spec = normalizer_spec(self._proto)
        except Exception:  # noqa: BLE001 - sentencepiece raises several types for a bad proto
            raise UserError(f"{source}: not a sentencepiece model") from None
        self.normalizer = spec
        self.adds_dummy_prefix: bool = spec["add_dummy_prefix"]
        # sentencepiece's decode drops the "▁" of the first piece when either option is on (checked with 0.2):
        # that space is an artefact of normalisation, not text, so after a boundary token it counts 0 bytes.
        self.drops_leading_space: bool = spec["add_dummy_prefix"] or spec["remove_extra_whitespaces"]
        self.lossless: bool = spec["name"] == "identity" and not self.drops_leading_space
        self.vocab_size = int(self.sp.vocab_size())
        self.bos_id = int(self.sp.bos_id())
        self.eos_id = int(self.sp.eos_id())
        if self.bos_id < 0:
            raise UserError(f"{source}: tokenizer has no BOS token (shards separate documents with BOS)")
        if self.vocab_size > MAX_VOCAB_SIZE:
            raise UserError(
                f"{source}: vocabulary of {self.vocab_size} does not fit uint16 shards (max {MAX_VOCAB_SIZE})"
            )
        self.base_bytes, self.has_leading_space, self.is_boundary = self._build_byte_tables()

    @classmethod
    def load(cls, path: Path | str) -> Tokenizer:
        path = Path(path)
        if not path.is_file():
            raise UserError(f"tokenizer not found: {path}")
        return cls(path.read_bytes(), source=str(path))

    @classmethod
    def from_bytes(cls, proto: bytes, source: str = "<memory>") -> Tokenizer:
        return cls(proto, source)

    def model_bytes(self) -> bytes:
        """The serialized model proto, e.g. to embed in an artifact."""
        return self._proto

    def encode(self, text: str) -> list[int]:
        return self.sp.encode(text)

    def encode_batch(self, texts: list[str], num_threads: int | None = None) -> list[list[int]]:
        return self.sp.encode(texts, num_threads=num_threads or os.cpu_count() or 1)

    def encode_documents(self, texts: list[str]) -> list[np.ndarray]:
        """Token ids of each text as an int32 array (batch-encoded on every core)."""
        return [np.asarray(ids, dtype=np.int32) for ids in self.encode_batch(texts)]

    def decode(self, ids: Sequence[int] | np.ndarray) -> str:
        return self.sp.decode(np.asarray(ids, dtype=np.int64).tolist())

    def _build_byte_tables(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        sp, size = self.sp, self.vocab_size
        base_bytes = np.zeros(size, dtype=np.int16)
        has_leading_space = np.zeros(size, dtype=bool)
        is_boundary = np.ones(size, dtype=bool)
        for token in range(size):
            if sp.is_control(token) or sp.is_unknown(token) or sp.is_unused(token):
                continue  # boundary tokens decode to nothing: 0 bytes
            is_boundary[token] = False
            if sp.is_byte(token):
                base_bytes[token] = 1
                continue
            piece = sp.id_to_piece(token)
            if piece.startswith("▁"):
                has_leading_space[token] = True
                piece = piece[1:]
            # Any further "▁" (whitespace-only pieces like "▁▁▁▁") decodes to one space byte each.
            base_bytes[token] = len(piece.replace("▁", " ").encode("utf-8"))
        return base_bytes, has_leading_space, is_boundary

    def token_byte_tables(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(base_bytes int16[V], has_leading_space bool[V], is_boundary bool[V]), as the parameter-golf luts.

        Bytes of target t after previous token p: base_bytes[t] + (has_leading_space[t] and
        (not is_boundary[p] or not drops_leading_space)). The reference always drops that space after a boundary,
        which is right for its tokenizers (whitespace collapsing on) but would undercount a lossless one.
        """
        return self.base_bytes, self.has_leading_space, self.is_boundary

    def count_bytes(self, prev_ids: np.ndarray, target_ids: np.ndarray) -> int:
        """UTF-8 bytes that `target_ids` add to the decoded text, each following the matching `prev_ids` token.

        Over a stream `BOS doc1 BOS doc2 ...` (prev = stream[:-1], targets = stream[1:]) this equals the summed
        UTF-8 length of each document decoded on its own.
        """
        return int(self.target_bytes(prev_ids, target_ids).sum(dtype=np.int64))

    def target_bytes(self, prev_ids: np.ndarray, target_ids: np.ndarray) -> np.ndarray:
        """Per-token version of `count_bytes`: the UTF-8 bytes each target adds (int64, same shape)."""
        prev_ids, target_ids = np.asarray(prev_ids), np.asarray(target_ids)
        if prev_ids.shape != target_ids.shape:
            raise ValueError(f"prev_ids {prev_ids.shape} and target_ids {target_ids.shape} differ in shape")
        space = self.has_leading_space[target_ids]
        if self.drops_leading_space:
            space = space & ~self.is_boundary[prev_ids]
        return self.base_bytes[target_ids].astype(np.int64) + space.astype(np.int64)
