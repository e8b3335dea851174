"""How a cluster option is declared: once, with its config key, validator, help and flag.

:class:`~minimaldask.spec.ClusterSpec` declares each of its fields with
:func:`option`; from those declarations come ``ClusterSpec.from_options``, the
flags of ``minimaldask up`` (:func:`add_flags`, :func:`from_flags`) and the
table of docs/options.md (:func:`markdown_table`, checked by a test).
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

#: Metadata key under which a dataclass field carries its :class:`Option`.
METADATA = "minimaldask.option"


@dataclass(frozen=True)
class Flag:
    """An option on the command line: the flag's names and how argparse reads it."""

    names: tuple[str, ...]
    type: Callable[[str], Any] | None = None
    metavar: str | None = None
    #: ``append`` (repeatable), ``store_true`` or ``store_const``; plain values otherwise.
    action: str | None = None
    #: The value of a ``store_const`` flag.
    const: Any = None
    #: The flag's value to the option's value (e.g. ``NAME=VALUE`` lines to a mapping).
    convert: Callable[[Any], Any] | None = None
    #: A positional argument (``minimaldask up NAME``), which may be left out.
    positional: bool = False


@dataclass(frozen=True)
class Option:
    """One option of a cluster."""

    help: str
    #: Validates a value given by the user (or the config) and returns the spec's value:
    #: ``parse(name, value)``; raises ValueError naming the option, the value and what
    #: would be valid.
    parse: Callable[[str, Any], Any]
    #: Key under ``minimaldask.`` in dask config that holds the default.
    key: str | None = None
    #: The default when there is no config key (called: it may read several keys).
    default: Callable[[], Any] = lambda: None
    #: The config keys that ``default`` reads, for the docs.
    default_keys: tuple[str, ...] = ()
    #: ``None`` given for the option means "off" rather than "the default".
    nullable: bool = False
    #: How ``minimaldask up`` takes it; None: not on the command line.
    flag: Flag | None = None
    #: Filled in by :func:`options_of`: the field's name.
    name: str = ""


def option(
    help: str,
    parse: Callable[[str, Any], Any],
    *,
    key: str | None = None,
    default: Callable[[], Any] | None = None,
    default_keys: tuple[str, ...] = (),
    nullable: bool = False,
    flag: Flag | None = None,
) -> Any:
    """Declare a field of ClusterSpec as an option (use it as the field's default)."""
    declared = Option(
        help=help,
        parse=parse,
        key=key,
        default=default or (lambda: None),
        default_keys=default_keys,
        nullable=nullable,
        flag=flag,
    )
    return dataclasses.field(metadata={METADATA: declared})


def options_of(cls: type) -> list[Option]:
    """The options a dataclass declares, in field order, each knowing its name."""
    return [
        dataclasses.replace(f.metadata[METADATA], name=f.name)
        for f in dataclasses.fields(cls)
        if METADATA in f.metadata
    ]


def add_flags(parser: argparse.ArgumentParser, options: Iterable[Option]) -> None:
    """Add the flags of ``options`` to ``parser`` (their defaults stay unset: None)."""
    for o in options:
        if o.flag is None:
            continue
        if o.flag.positional:
            parser.add_argument(o.name, nargs="?", help=_flag_help(o))
            continue
        kwargs: dict[str, Any] = {"dest": o.name, "help": _flag_help(o), "default": None}
        if o.flag.action:
            kwargs["action"] = o.flag.action
        if o.flag.action == "store_const":
            kwargs["const"] = o.flag.const
        if o.flag.type:
            kwargs["type"] = o.flag.type
        if o.flag.metavar:
            kwargs["metavar"] = o.flag.metavar
        parser.add_argument(*o.flag.names, **kwargs)


def _flag_help(o: Option) -> str:
    keys = (o.key,) if o.key else o.default_keys
    text = o.help.rstrip(".").replace("%", "%%")
    return (
        f"{text} (default from config: {', '.join('minimaldask.' + k for k in keys)})"
        if keys
        else text
    )


def from_flags(args: argparse.Namespace, options: Iterable[Option]) -> dict[str, Any]:
    """The options given on the command line, converted; unset flags are left out."""
    out: dict[str, Any] = {}
    for o in options:
        if o.flag is None:
            continue
        value = getattr(args, o.name, None)
        if value is None:  # not given: the configured default
            continue
        out[o.name] = o.flag.convert(value) if o.flag.convert else value
    return out


def markdown_table(options: Sequence[Option], defaults: dict[str, Any]) -> str:
    """docs/options.md's table: option, config key and its shipped default, flag, meaning."""
    rows = [
        "| option | config key (`minimaldask.`) | shipped default | `minimaldask up` | what it does |",
        "|---|---|---|---|---|",
    ]
    for o in options:
        keys = (o.key,) if o.key else o.default_keys
        key = ", ".join(f"`{k}`" for k in keys)
        default = ", ".join(_shipped(defaults, k) for k in keys)
        flag = ""
        if o.flag:
            flag = (
                f"`{o.name.upper()}`"
                if o.flag.positional
                else " / ".join(f"`{n}`" for n in o.flag.names)
            )
        rows.append(f"| `{o.name}` | {key} | {default} | {flag} | {o.help} |")
    return "\n".join(rows) + "\n"


def _shipped(defaults: dict[str, Any], key: str) -> str:
    value: Any = defaults
    for part in key.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return "none" if value is None else f"`{value}`"
