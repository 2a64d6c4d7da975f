"""Command-line flags built from the frozen config dataclasses, so no default is written twice."""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from typing import Any, TypeVar

__all__ = ["add_config_arguments", "config_from_args", "help_text"]

C = TypeVar("C")


def _flag(prefix: str, name: str) -> str:
    return "--" + (prefix + name).replace("_", "-")


def _dest(prefix: str, name: str) -> str:
    return (prefix + name).replace("-", "_")


def help_text(field: dataclasses.Field) -> str:
    """The ``--help`` text of a config field: its ``metadata["help"]`` (see :func:`progaug.config.setting`),
    followed by ``(default: ...)`` unless the default is None (the text then says what None means)."""
    text = field.metadata.get("help", "")
    default = field.default
    if default is not None:
        shown = list(default) if isinstance(default, tuple) else default
        text = f"{text} (default: {shown})".lstrip()
    return text.replace("%", "%%")


def add_config_arguments(parser: argparse.ArgumentParser, cls: type, *, prefix: str = "", exclude: tuple[str, ...] = ()) -> None:
    """Add one flag per field of dataclass ``cls``; defaults are None so only given flags override.

    ``int``/``float``/``str`` fields take one value, ``bool`` fields get ``--x/--no-x``, ``Literal`` fields
    get ``choices``, ``tuple[int, ...]`` fields take several values. A field's ``metadata["aliases"]`` adds
    other spellings of its flag (``--num-samples`` for ``--n``, which ``torchrun``'s parser would take).
    """
    hints = typing.get_type_hints(cls)
    group = parser.add_argument_group(cls.__name__)
    for field in dataclasses.fields(cls):
        if field.name in exclude:
            continue
        kind = hints[field.name]
        kwargs: dict[str, Any] = {"dest": _dest(prefix, field.name), "default": None}
        origin, args = typing.get_origin(kind), typing.get_args(kind)
        if origin in (typing.Union, types.UnionType):
            kind = next(a for a in args if a is not type(None))
            origin, args = typing.get_origin(kind), typing.get_args(kind)
        if kind is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif origin is typing.Literal:
            kwargs["choices"] = list(args)
        elif origin is tuple:
            kwargs.update(nargs="+", type=args[0])
        else:
            kwargs["type"] = kind
        aliases = tuple(field.metadata.get("aliases", ()))
        group.add_argument(_flag(prefix, field.name), *aliases, help=help_text(field), **kwargs)


def config_from_args(cls: type[C], args: argparse.Namespace, *, prefix: str = "", base: C | None = None, **overrides: Any) -> C:
    """Build ``cls`` from ``base`` (or the defaults), the flags that were given, then ``overrides``."""
    values = dataclasses.asdict(base) if base is not None else {}
    for field in dataclasses.fields(cls):
        value = getattr(args, _dest(prefix, field.name), None)
        if value is not None:
            values[field.name] = tuple(value) if isinstance(value, list) else value
    values.update(overrides)
    return cls(**values)
