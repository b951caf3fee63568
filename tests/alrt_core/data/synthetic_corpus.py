"""Deterministic synthetic text with the whitespace a lossless tokenizer must keep (indents, tabs, double spaces)."""

from __future__ import annotations

import random

WORDS = ["the", "and", "sweet", "night", "love", "lord", "king", "thou", "art", "hast", "good", "fair", "shall"]


def synthetic_text(seed: int, lines: int = 150) -> str:
    rng = random.Random(seed)
    out = []
    for _ in range(lines):
        indent = rng.choice(["", "", "", "    ", "\t", "  "])
        words = [rng.choice(WORDS) for _ in range(rng.randint(1, 9))]
        out.append(indent + rng.choice([" ", " ", " ", "  "]).join(words) + rng.choice([".", ",", "", "!"]))
    return "\n".join(out) + rng.choice(["\n", "\n\n", ""])
