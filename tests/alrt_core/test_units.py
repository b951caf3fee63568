"""Byte sizes: decimal MB, binary MiB, plain integers, and the errors."""

from __future__ import annotations

import pytest

from alrt_core.errors import UserError
from alrt_core.units import format_bytes, parse_byte_size


@pytest.mark.parametrize(
    ("text", "size"),
    [("16MB", 16_000_000), ("15.5MB", 15_500_000), ("16MiB", 16_777_216), ("16000000", 16_000_000),
     ("16_000_000", 16_000_000), ("2kb", 2000), ("1 GiB", 2**30), (123, 123)],
)
def test_parse_byte_size(text, size):
    assert parse_byte_size(text) == size


@pytest.mark.parametrize("text", ["16 megabytes", "MB", "-5MB", "0", "1.5", "16XB"])
def test_bad_byte_sizes_are_user_errors(text):
    with pytest.raises(UserError, match="bad byte size"):
        parse_byte_size(text)


def test_format_bytes():
    assert format_bytes(15_998_312) == "15,998,312 B (16.00 MB)"
