"""Dataclass configs from YAML values, ``KEY=VALUE`` overrides and command-line flags.

One mechanism for the preprocessing CLI (:class:`pipeline.config.PreprocessConfig`) and the
training configuration (:class:`trainer.config.TrainConfig`): a field's annotation decides
how text is read, its metadata carries the help (and ``choices``), and the dataclass's
``__post_init__`` runs the cross-field checks. The text itself is read by transformers'
:class:`~transformers.HfArgumentParser`, the parser of TRL's scripts: ``--name`` and
``--name-with-dashes``, ``bool`` as ``--flag [true|false]`` and ``--no-flag``, ``X | None``
as ``X``, lists as ``nargs="+"``. This module adds what it lacks: ``null`` as None for
optional fields, ``tuple[X, ...]`` read as a list, comma-separated lists in ``KEY=VALUE``
form, and unknown keys named with the closest valid one.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import functools
import re
import types
import typing
from collections.abc import Iterable, Mapping

NONE_WORDS = frozenset({"none", "null", "~", ""})  # read as None by optional fields
_IMPLIED = frozenset({"type", "nargs", "action"})  # argparse keywords the annotation decides


class UnknownConfigKey(KeyError, ValueError):
    """A key that is not a field of the config (the message names the closest one)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


def closest_key(key: str, valid: Iterable[str]) -> str:
    """``"did you mean 'x'?"``, or the list of valid keys when none is close."""
    valid = list(valid)
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
    return f"did you mean {close[0]!r}?" if close else "valid keys: " + ", ".join(valid)


def _without_none(tp):
    """``(X, optional)`` for ``X | None``; ``(tp, False)`` otherwise."""
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType) and type(None) in args:
        (inner,) = [a for a in args if a is not type(None)]
        return inner, True
    return tp, False


def _as_list(tp):
    """``tuple[X, ...]`` -> ``list[X]`` (also inside ``| None``); HfArgumentParser reads lists."""
    inner, optional = _without_none(tp)
    args = typing.get_args(inner)
    if typing.get_origin(inner) is tuple and len(args) == 2 and args[1] is Ellipsis:
        inner = list[args[0]]
    return inner | None if optional else inner


@functools.cache
def _hf_parser(cls: type, title: str | None, choices: bool) -> argparse.ArgumentParser:
    """An HfArgumentParser over a copy of ``cls`` whose fields keep only help (and choices)."""
    from transformers import HfArgumentParser

    class Parser(HfArgumentParser):
        def error(self, message: str):  # read_values names the source; parents keep exit 2
            raise ValueError(message)

    hints = typing.get_type_hints(cls)
    specs = []
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        meta = {k: v for k, v in f.metadata.items() if k not in _IMPLIED}
        if not choices:  # left to the dataclass's own checks, which list every problem at once
            meta.pop("choices", None)
        default = (
            {"default": f.default}
            if f.default is not dataclasses.MISSING
            else {"default_factory": f.default_factory}
        )
        specs.append((f.name, _as_list(hints[f.name]), dataclasses.field(metadata=meta, **default)))
    shadow = dataclasses.make_dataclass(
        cls.__name__, specs, namespace={"_argument_group_name": title} if title else None
    )
    parser = Parser(shadow, add_help=False)
    for action in parser._actions:  # HfArgumentParser repeats the field's help on --no_X
        if action.option_strings and action.option_strings[0].startswith("--no_"):
            action.help, action.default = f"sets {action.dest} to false", argparse.SUPPRESS
    for f in dataclasses.fields(cls):  # HfArgumentParser only adds --no-X to fields defaulting True
        if hints.get(f.name) is bool and f.default is False:
            parser.add_argument(
                f"--no-{f.name.replace('_', '-')}",
                dest=f.name,
                action="store_false",
                default=argparse.SUPPRESS,
                help=argparse.SUPPRESS,
            )
    return parser


def flag_parser(cls: type, title: str) -> argparse.ArgumentParser:
    """A parent parser (``ArgumentParser(parents=[...])``) with one flag per field of ``cls``,
    grouped under ``title``; the parsed namespace carries each field under its own name."""
    return _hf_parser(cls, title, True)


def _text(value) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    return repr(value) if isinstance(value, float) else str(value)


def _items(value) -> list:
    """A list value: a YAML list, ``"[a, b]"`` or ``"a,b"``."""
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            import yaml

            value = yaml.safe_load(text)
        else:
            value = [v.strip() for v in text.split(",") if v.strip()]
    return list(value) if isinstance(value, list | tuple) else [value]


def read_values(cls: type, values: Mapping, source: str = "dict") -> dict:
    """``{field: value}`` (values from YAML or ``KEY=VALUE`` text) -> values of the fields' types.

    Raises:
        UnknownConfigKey: a key that is not a field of ``cls`` (the closest one is named).
        ValueError: a value that cannot be read as its field's type (key and value named).
    """
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if f.init]
    argv: list[str] = []
    direct: dict = {}
    for name, value in values.items():
        if name not in names:
            raise UnknownConfigKey(
                f"{source}: unknown config key {name!r}; {closest_key(name, names)}"
            )
        inner, optional = _without_none(_as_list(hints[name]))
        if optional and (
            value is None or (isinstance(value, str) and value.strip().lower() in NONE_WORDS)
        ):
            direct[name] = None
        elif typing.get_origin(inner) is list:
            items = _items(value)
            if items:
                argv += [f"--{name}", *map(_text, items)]
            else:
                direct[name] = []
        elif value is None or isinstance(value, list | tuple | Mapping):
            kind = getattr(inner, "__name__", inner)
            raise ValueError(f"{source}: config key {name!r}: cannot read {value!r} as {kind}")
        else:
            argv.append(f"--{name}={_text(value)}")
    try:
        parsed = vars(_hf_parser(cls, None, False).parse_args(argv))
    except ValueError as e:  # "argument --max_steps/--max-steps: invalid int value: 'ten'"
        message = re.sub(r"^argument --(\w+)(/--[\w-]+)?: ", r"config key '\1': ", str(e))
        raise ValueError(f"{source}: {message}") from None
    out = {name: parsed[name] for name in values if name not in direct} | direct
    for name, value in out.items():  # tuple fields get tuples back
        if isinstance(value, list) and typing.get_origin(_without_none(hints[name])[0]) is tuple:
            out[name] = tuple(value)
    return out


def from_mapping(cls: type, values: Mapping, source: str = "dict"):
    """``cls(**read_values(cls, values, source))``: read, then checked by ``cls`` itself."""
    return cls(**read_values(cls, values, source))
