"""`alrt inspect artifact`: what an artifact holds and where its bytes go (read from the verified manifest)."""

from __future__ import annotations

from collections import Counter
from math import prod
from pathlib import Path
from typing import Any

from export.artifact import HEADER_SIZE, format_version, read_artifact
from export.payload import TOKENIZER_ENTRY


def artifact_report(path: Path) -> dict[str, Any]:
    manifest, payload = read_artifact(path)  # verifies magic, version, length and both checksums
    file_bytes = path.stat().st_size
    byte_map: dict[str, int] = manifest["byte_map"]
    entries = []
    for name, scheme in manifest["tensors"].items():
        values = prod(scheme["shape"]) if scheme["shape"] else 1
        label = f"int{scheme['bits']} {scheme['storage']}" if scheme["type"] == "int" else "fp16"
        if scheme["type"] == "int" and scheme.get("clip") is not None:
            label += f", clip {scheme['clip']:g}σ"
        entries.append({"name": name, "scheme": label, "values": values, "bytes": byte_map[name]})
    entries.append({"name": TOKENIZER_ENTRY, "scheme": "sentencepiece", "values": manifest["raw_bytes"][TOKENIZER_ENTRY],
                    "bytes": byte_map[TOKENIZER_ENTRY]})
    entries.sort(key=lambda entry: -entry["bytes"])
    for entry in entries:
        entry["share"] = entry["bytes"] / max(len(payload), 1)
    params = sum(entry["values"] for entry in entries if entry["name"] != TOKENIZER_ENTRY)
    return {
        "path": str(path),
        "file_bytes": file_bytes,
        "format_version": format_version(path.read_bytes()[:HEADER_SIZE]),
        "compressor": manifest["compressor"],
        "storage": manifest["storage"],
        "frames": len(manifest["frames"]) if "frames" in manifest else 1,  # format 1-2: one stream
        "config": manifest["config"],
        "ranks": manifest["ranks"],
        "fold_counts": dict(Counter(manifest["fold"].values())),
        "params": params,
        "source": manifest["source"],
        "quantizer": manifest["quantizer"],
        "calibration": manifest["calibration"],
        "sections": {"header": HEADER_SIZE, "manifest": file_bytes - HEADER_SIZE - len(payload), "payload": len(payload)},
        "entries": entries,
    }
