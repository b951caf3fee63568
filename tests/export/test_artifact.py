"""The .alrt container: round trip, and every kind of damage is a one-line user error."""

from __future__ import annotations

import pytest

from alrt_core.errors import UserError
from export.artifact import FORMAT_VERSION, HEADER_SIZE, MAGIC, decode_artifact, encode_artifact, is_artifact


def sample() -> bytes:
    return encode_artifact({"format": "alrt-artifact", "config": {"x": 1}}, b"payload bytes" * 10)


def test_round_trip_and_checksums_in_the_manifest():
    manifest, payload = decode_artifact(sample())
    assert payload == b"payload bytes" * 10 and manifest["config"] == {"x": 1}
    assert manifest["payload_bytes"] == 130 and len(manifest["payload_sha256"]) == 64


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda d: b"NOTALRT!" + d[8:], "wrong magic"),
        (lambda d: d[:HEADER_SIZE - 5], "truncated artifact"),
        (lambda d: d[:-3], "truncated artifact"),
        (lambda d: d + b"x", "trailing bytes"),
        (lambda d: d[:-1] + bytes([d[-1] ^ 1]), "payload checksum mismatch"),
        (lambda d: d[:HEADER_SIZE + 3] + bytes([d[HEADER_SIZE + 3] ^ 1]) + d[HEADER_SIZE + 4:], "manifest checksum"),
        (lambda d: d[:8] + (FORMAT_VERSION + 1).to_bytes(4, "little") + d[12:], "newer than this alrt reads"),
        (lambda d: b"", "wrong magic"),
    ],
)
def test_damaged_files_are_user_errors(damage, message):
    with pytest.raises(UserError, match=message):
        decode_artifact(damage(sample()), "model.alrt")


def test_the_manifest_is_compressed_and_version_1_files_still_read():
    import hashlib
    import json
    import struct

    manifest = {"format": "alrt-artifact", "config": {"layer": list(range(300))}, "tensors": {f"t{i}": {"bits": 6} for i in range(50)}}
    data = encode_artifact(manifest, b"payload")
    plain = len(json.dumps(decode_artifact(data)[0], sort_keys=True, separators=(",", ":")))
    stored = struct.unpack_from("<I", data, 12)[0]
    assert FORMAT_VERSION == 3 and stored < plain / 3  # brotli-compressed JSON (since version 2)
    # A version-1 file (plain JSON manifest) written by an older alrt.
    old_manifest = json.dumps(decode_artifact(data)[0], sort_keys=True, separators=(",", ":")).encode()
    header = struct.pack("<8sIIQ32s", MAGIC, 1, len(old_manifest), 7, hashlib.sha256(old_manifest).digest())
    assert decode_artifact(header + old_manifest + b"payload")[0]["config"] == manifest["config"]


def test_is_artifact_by_magic(tmp_path):
    (tmp_path / "a.alrt").write_bytes(sample())
    (tmp_path / "b.pt").write_bytes(b"PK\x03\x04 not an artifact")
    assert MAGIC == b"ALRTART1" and is_artifact(tmp_path / "a.alrt") and not is_artifact(tmp_path / "b.pt")
