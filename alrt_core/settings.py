"""Settings that document themselves: a dataclass field carries its doc, and a `Literal` type its choices.

A flag that sets a field takes its help from the doc; the check of a `Literal` field and the flag's help both read
the accepted values from the type. So each is written once, at the field.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Callable
from typing import Any, Literal, TypeVar

from alrt_core.errors import UserError

T = TypeVar("T")

_DOC = "doc"  # the metadata key of a field's doc


def setting(default: T, doc: str) -> T:
    """A dataclass field with its default and its doc (the help of any flag that sets it)."""
    return dataclasses.field(default=default, metadata={_DOC: doc})


def setting_doc(cls: type, name: str) -> str:
    """The doc of field `name` of the dataclass `cls`."""
    return next(f for f in dataclasses.fields(cls) if f.name == name).metadata[_DOC]


def setting_choices(cls: type, name: str) -> tuple[Any, ...]:
    """The values a `Literal`-typed field accepts; () for a field of any other type."""
    return _literal_choices(typing.get_type_hints(cls)[name])


def check_choices(options: Any, label: Callable[[str], str]) -> None:
    """A UserError for the first `Literal`-typed field of the dataclass `options` whose value is not one of its
    choices, naming the field as `label(name)` (a config key, a flag)."""
    hints = typing.get_type_hints(type(options))
    for f in dataclasses.fields(options):
        choices = _literal_choices(hints[f.name])
        value = getattr(options, f.name)
        if choices and value not in choices:
            raise UserError(f"{label(f.name)}={value!r} must be {_one_of(choices)}")


def _literal_choices(hint: Any) -> tuple[Any, ...]:
    return typing.get_args(hint) if typing.get_origin(hint) is Literal else ()


def _one_of(choices: tuple[Any, ...]) -> str:
    # A few choices read as a sentence ("'svd' or 'truncate'"), more as a list ("one of dense, fixed, stable, ...").
    if len(choices) > 3:
        return "one of " + ", ".join(str(choice) for choice in choices)
    quoted = [repr(choice) for choice in choices]
    return quoted[0] if len(quoted) == 1 else f"{', '.join(quoted[:-1])} or {quoted[-1]}"
