"""Byte sizes as users write them: decimal units (`16MB` = 16,000,000), binary units (`16MiB` = 16,777,216) or
plain integers. Parameter golf counts its 16 MB limit in decimal bytes, so `MB` is never 2^20 here."""

from __future__ import annotations

import re
from decimal import Decimal, localcontext

from alrt_core.errors import UserError

_UNITS = {
    "": 1, "b": 1,
    "kb": 10**3, "mb": 10**6, "gb": 10**9,
    "kib": 2**10, "mib": 2**20, "gib": 2**30,
}
_PATTERN = re.compile(r"^\s*([0-9][0-9_]*(?:\.[0-9]+)?)\s*([a-zA-Z]*)\s*$")


def parse_byte_size(text: str | int) -> int:
    """Bytes in `text` (`16MB`, `15.5MB`, `16MiB`, `16000000`); a user error for anything else."""
    if isinstance(text, int):
        value, unit = Decimal(text), ""
    else:
        match = _PATTERN.match(str(text))
        if not match or match.group(2).lower() not in _UNITS:
            raise UserError(f"bad byte size {text!r}: use e.g. 16MB (decimal), 16MiB (binary) or a byte count")
        value, unit = Decimal(match.group(1).replace("_", "")), match.group(2).lower()
    # Decimal, not float: 16.1 * 10**6 is 16100000.000000002 in binary floating point, and 1.000000000000000001MB
    # would round to a whole number there. The precision covers every digit of the product, so it is exact.
    with localcontext() as context:
        context.prec = len(value.as_tuple().digits) + len(str(_UNITS[unit])) + 1
        size = value * _UNITS[unit]
    if size < 1 or size != size.to_integral_value():
        raise UserError(f"bad byte size {text!r}: must be a whole, positive number of bytes")
    return int(size)


def format_bytes(size: int) -> str:
    """`15,998,312 B (16.00 MB)`: exact bytes plus decimal megabytes, the unit budgets are given in."""
    return f"{size:,} B ({size / 1e6:.2f} MB)"
