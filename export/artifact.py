"""The `.alrt` artifact: one pickle-free file holding everything a model needs to run.

Layout (all integers little-endian):

    offset 0   8 bytes   magic b"ALRTART1"
           8   u32       format version
          12   u32       manifest length M
          16   u64       payload length P
          24   32 bytes  SHA-256 of the manifest bytes
          56   M bytes   manifest: UTF-8 JSON (model config, per-layer ranks and fold decisions, per-tensor scheme,
                         compressor, section sizes, SHA-256 of the payload and of the tokenizer), brotli-compressed
                         from format version 2 on (version 1 stored it plain)
        56+M   P bytes   payload: a safetensors blob of byte tensors (packed integers, byte-shuffled fp16 scales and
                         small tensors, the tokenizer model), compressed in frames from format version 3 on (the
                         manifest's `frames` lists their compressed lengths: `export.compress`), as one stream before

The manifest is compressed because at small budgets it is not small: ~10 KB of JSON was 5% of a 200 KB artifact
(brotli takes it to ~2 KB). Version 1 and 2 files are still read.

Reading checks, before anything else, the magic, the version, that the file is exactly as long as the header says,
and both checksums; any failure is a one-line `UserError`.
"""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path
from typing import Any

import brotli

from alrt_core.errors import UserError
from alrt_core.fileio import atomic_write_bytes

MAGIC = b"ALRTART1"
FORMAT_VERSION = 3
READABLE_VERSIONS = (1, 2, 3)
_HEADER = struct.Struct("<8sIIQ32s")
HEADER_SIZE = _HEADER.size


def encode_artifact(manifest: dict[str, Any], payload: bytes) -> bytes:
    """The complete file contents (so the size is known exactly before anything is written)."""
    manifest = {**manifest, "payload_sha256": hashlib.sha256(payload).hexdigest(), "payload_bytes": len(payload)}
    manifest_bytes = brotli.compress(json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode("utf-8"),
                                     quality=11)
    header = _HEADER.pack(MAGIC, FORMAT_VERSION, len(manifest_bytes), len(payload), hashlib.sha256(manifest_bytes).digest())
    return header + manifest_bytes + payload


def write_artifact(path: Path, data: bytes) -> None:
    atomic_write_bytes(path, data)


def decode_artifact(data: bytes, source: str = "artifact") -> tuple[dict[str, Any], bytes]:
    """(manifest, compressed payload) after every check; `source` names the file in errors."""
    if len(data) < HEADER_SIZE:
        if not data.startswith(MAGIC[: len(data)]) or not data:
            raise UserError(f"{source}: not an ALRT artifact (wrong magic)")
        raise UserError(f"{source}: truncated artifact ({len(data)} bytes, header needs {HEADER_SIZE})")
    magic, version, manifest_size, payload_size, manifest_digest = _HEADER.unpack_from(data)
    if magic != MAGIC:
        raise UserError(f"{source}: not an ALRT artifact (wrong magic)")
    if version > FORMAT_VERSION:
        raise UserError(f"{source}: artifact format version {version} is newer than this alrt reads ({FORMAT_VERSION}); upgrade alrt")
    if version not in READABLE_VERSIONS:
        raise UserError(f"{source}: artifact format version {version} is not supported")
    expected = HEADER_SIZE + manifest_size + payload_size
    if len(data) < expected:
        raise UserError(f"{source}: truncated artifact ({len(data):,} of {expected:,} bytes)")
    if len(data) > expected:
        raise UserError(f"{source}: corrupt artifact ({len(data) - expected:,} unexpected trailing bytes)")
    manifest_bytes = data[HEADER_SIZE : HEADER_SIZE + manifest_size]
    if hashlib.sha256(manifest_bytes).digest() != manifest_digest:
        raise UserError(f"{source}: corrupt artifact (manifest checksum mismatch)")
    try:
        manifest = json.loads(brotli.decompress(manifest_bytes) if version >= 2 else manifest_bytes)
    except (brotli.error, ValueError):
        raise UserError(f"{source}: corrupt artifact (unreadable manifest)") from None
    payload = data[HEADER_SIZE + manifest_size :]
    if hashlib.sha256(payload).hexdigest() != manifest.get("payload_sha256"):
        raise UserError(f"{source}: corrupt artifact (payload checksum mismatch)")
    return manifest, payload


def format_version(data: bytes) -> int:
    """The format version in an artifact's header (after `decode_artifact` has checked it)."""
    return _HEADER.unpack_from(data)[1]


def read_artifact(path: Path) -> tuple[dict[str, Any], bytes]:
    if not path.is_file():
        raise UserError(f"artifact not found: {path}")
    return decode_artifact(path.read_bytes(), str(path))


def is_artifact(path: Path) -> bool:
    """True when the file starts with the artifact magic (used to tell artifacts from checkpoints)."""
    try:
        with path.open("rb") as handle:
            return handle.read(len(MAGIC)) == MAGIC
    except OSError:
        return False
