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


@pytest.mark.parametrize(
    ("text", "size"),
    [("16.1MB", 16_100_000), ("15.5MB", 15_500_000), ("1.5KiB", 1536), ("0.1MB", 100_000), ("0.3MB", 300_000),
     ("15.999999MB", 15_999_999), ("2.01kB", 2010), ("4.1MB", 4_100_000), ("1.07GB", 1_070_000_000),
     ("0.125KiB", 128), ("1_000.5kB", 1_000_500)],
)
def test_exact_decimal_sizes_are_accepted(text, size):
    # Whole byte counts that binary floating point misses (16.1 * 10**6 = 16100000.000000002).
    assert parse_byte_size(text) == size


@pytest.mark.parametrize("text", ["0.1KiB", "1.0000001MB", "1.000000000000000001MB", "0.5", "1.5B", "0.0001kB"])
def test_sizes_that_are_not_whole_bytes_are_refused(text):
    with pytest.raises(UserError, match="whole, positive number of bytes"):
        parse_byte_size(text)
