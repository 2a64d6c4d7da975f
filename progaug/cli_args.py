"""Command-line flags built from the frozen config dataclasses, so no default is written twice."""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import re
import types
import typing
from typing import Any, TypeVar

__all__ = ["add_config_arguments", "config_from_args", "field_docs"]

C = TypeVar("C")


def _flag(prefix: str, name: str) -> str:
    return "--" + (prefix + name).replace("_", "-")


def _dest(prefix: str, name: str) -> str:
    return (prefix + name).replace("-", "_")


def field_docs(cls: type) -> dict[str, str]:
    """The first sentence of each field's entry in the ``Attributes:`` section of ``cls``'s docstring."""
    docs: dict[str, str] = {}
    lines = inspect.cleandoc(cls.__doc__ or "").splitlines()
    if "Attributes:" not in lines:
        return docs
    current = None
    for line in lines[lines.index("Attributes:") + 1 :]:
        if line and not line.startswith(" "):
            break
        match = re.match(r"^ {4}(\w+)(?: \(.*?\))?: (.*)$", line)
        if match:
            current = match.group(1)
            docs[current] = match.group(2).strip()
        elif current and line.strip():
            docs[current] += " " + line.strip()
    plain = {k: re.sub(r"``(.*?)``", r"\1", re.sub(r":\w+:`~?(?:[\w.]*\.)?(\w+)`", r"\1", v)) for k, v in docs.items()}
    return {k: v.split(". ")[0].rstrip(".") for k, v in plain.items()}


def add_config_arguments(parser: argparse.ArgumentParser, cls: type, *, prefix: str = "", exclude: tuple[str, ...] = ()) -> None:
    """Add one flag per field of dataclass ``cls``; defaults are None so only given flags override.

    ``int``/``float``/``str`` fields take one value, ``bool`` fields get ``--x/--no-x``, ``Literal`` fields
    get ``choices``, ``tuple[int, ...]`` fields take several values.
    """
    hints = typing.get_type_hints(cls)
    docs = field_docs(cls)
    group = parser.add_argument_group(cls.__name__)
    for field in dataclasses.fields(cls):
        if field.name in exclude:
            continue
        kind = hints[field.name]
        kwargs: dict[str, Any] = {"dest": _dest(prefix, field.name), "default": None}
        default = field.default
        help_text = f"(default: {list(default) if isinstance(default, tuple) else default})"
        if field.name in docs:
            doc = docs[field.name]
            help_text = (doc if default is None and "default" in doc.lower() else f"{doc} {help_text}").replace("%", "%%")
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
        group.add_argument(_flag(prefix, field.name), help=help_text, **kwargs)


def config_from_args(cls: type[C], args: argparse.Namespace, *, prefix: str = "", base: C | None = None, **overrides: Any) -> C:
    """Build ``cls`` from ``base`` (or the defaults), the flags that were given, then ``overrides``."""
    values = dataclasses.asdict(base) if base is not None else {}
    for field in dataclasses.fields(cls):
        value = getattr(args, _dest(prefix, field.name), None)
        if value is not None:
            values[field.name] = tuple(value) if isinstance(value, list) else value
    values.update(overrides)
    return cls(**values)
