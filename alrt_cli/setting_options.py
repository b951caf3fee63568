"""Typer options for flags that each set one documented setting (alrt_core.settings): help and choices come from
the field, so a flag never restates them."""

from __future__ import annotations

import typing
from typing import Any

import typer

from alrt_core.settings import setting_choices, setting_doc


def setting_option(cls: type, name: str, *declarations: str, **option: Any) -> Any:
    """`typer.Option` for field `name` of the dataclass `cls`: the field's doc is the help, and a `Literal` field
    shows its choices where the value's type goes, as click shows a choice."""
    choices = setting_choices(cls, name)
    metavar = f"[{'|'.join(choices)}]" if choices else None
    return typer.Option(*declarations, help=setting_doc(cls, name), metavar=metavar, **option)


def flag_type(cls: type, name: str) -> Any:
    """What a flag for field `name` parses: the field's type, but text for a `Literal` field, so that a wrong value
    reaches the options object's check and its one-line error (not click's usage screen)."""
    return str if setting_choices(cls, name) else typing.get_type_hints(cls)[name]
