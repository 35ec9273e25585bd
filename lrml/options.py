"""A typed dataclass as a command line: each field carries its default, help and bounds (``option``), the
parser is generated from the fields, and an instance prints the arguments that rebuild it.

So a new setting is one field: its flag, its ``--help`` line, its check and its place in a printed
command line all follow from it.
"""
from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from dataclasses import dataclass, field

from lrml.errors import UserError

_ABSENT = object()


@dataclass(frozen=True)
class Flag:
    """How a field reads on the command line, and the values it refuses."""

    help: str
    name: str = ""  # the flag; default ``--field-name``
    choices: tuple = ()
    at_least: float | None = None  # refused below this (None: no bound)
    above: float | None = None  # refused at or below this
    metavar: str | None = None
    bare: object = _ABSENT  # the value of the flag given without one (``--mlflow`` alone), if it may be


def option(default, help: str, **flag) -> dataclasses.Field:
    """A dataclass field that is also a command-line flag (``Flag``'s fields as keywords)."""
    return field(default=default, metadata={"flag": Flag(help, **flag)})


def flags(kind) -> dict[str, Flag]:
    """The fields of the dataclass ``kind`` that are flags, in their order, by field name."""
    return {item.name: item.metadata["flag"] for item in dataclasses.fields(kind) if "flag" in item.metadata}


def flag_name(kind, name: str) -> str:
    """The flag of field ``name``: what an error message names."""
    return flags(kind)[name].name or "--" + name.replace("_", "-")


def value_type(annotation) -> type:
    """The type a field's values have, without ``| None``: int, float, str or bool."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        (annotation,) = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
    return annotation


def add_flags(parser: argparse.ArgumentParser, kind) -> None:
    """One flag per ``option`` field of ``kind``, its default the field's, the default named in its help."""
    hints = typing.get_type_hints(kind)
    defaults = {item.name: item.default for item in dataclasses.fields(kind)}
    for name, flag in flags(kind).items():
        default, kind_of = defaults[name], value_type(hints[name])
        spec = {"dest": name, "default": default, "help": flag.help + _shown(default)}
        if kind_of is bool:
            if default is not False:
                raise TypeError(f"{kind.__name__}.{name}: a flag of its own turns a setting on; its default must be False")
            spec["action"] = "store_true"
        else:
            spec.update(type=kind_of, metavar=flag.metavar, choices=flag.choices or None)
            if flag.bare is not _ABSENT:
                spec.update(nargs="?", const=flag.bare)
        parser.add_argument(flag_name(kind, name), **spec)


def _shown(default) -> str:
    """The default as ``--help`` names it; none where there is nothing to name (unset, empty or off)."""
    if default is None or default is False or default == "":
        return ""
    return f" (default {default:g})" if isinstance(default, float) else f" (default {default})"


def from_flags(kind, namespace: argparse.Namespace):
    """An instance of ``kind`` from a namespace ``add_flags``'s parser filled."""
    return kind(**{name: getattr(namespace, name) for name in flags(kind)})


def parser_for(kind, **parser_options) -> argparse.ArgumentParser:
    """An argument parser of ``kind``'s flags (``parser_options`` go to ``ArgumentParser``)."""
    parser = argparse.ArgumentParser(**parser_options)
    add_flags(parser, kind)
    return parser


def check_values(instance) -> None:
    """Refuse a value outside its flag's choices or below its bound, naming the flag: one line, as every user
    mistake (the command line checks choices as it parses; this checks an instance however it was made)."""
    kind = type(instance)
    for name, flag in flags(kind).items():
        value = getattr(instance, name)
        if value is None:
            continue
        if flag.choices and value not in flag.choices:
            raise UserError(f"{flag_name(kind, name)} {value!r}: expected one of {', '.join(map(str, flag.choices))}")
        if flag.at_least is not None and value < flag.at_least:
            raise UserError(f"{flag_name(kind, name)} must be at least {flag.at_least:g}; got {value:g}")
        if flag.above is not None and value <= flag.above:
            raise UserError(f"{flag_name(kind, name)} must be above {flag.above:g}; got {value:g}")


def arguments(instance) -> list[str]:
    """The flags that rebuild ``instance`` through ``add_flags``'s parser: every field that is not at its default
    (floats written exactly, so the round trip is equal)."""
    kind, found = type(instance), []
    defaults = {item.name: item.default for item in dataclasses.fields(kind)}
    for name, flag in flags(kind).items():
        value = getattr(instance, name)
        if value == defaults[name]:
            continue
        if value is True or (flag.bare is not _ABSENT and value == flag.bare):
            found.append(flag_name(kind, name))
        elif value is not None and value is not False:
            found += [flag_name(kind, name), repr(value) if isinstance(value, float) else str(value)]
    return found
