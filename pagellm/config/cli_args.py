"""Command-line flags for every engine argument, generated from the config dataclasses.

Each field of the classes in ``pagellm.config.engine_args.CONFIG_CLASSES`` becomes one flag
under vLLM's name with dashes (``max_num_seqs`` -> ``--max-num-seqs``), its docstring as help:

- ``bool``            -> ``--flag`` / ``--no-flag`` (argparse.BooleanOptionalAction)
- ``int``, ``float``, ``str`` (optionally ``| None``) -> a typed value
- ``dict`` (optionally ``| None``) -> a JSON object, e.g. ``--compilation-config '{"a": 1}'``

``SHORT_FLAGS`` adds vLLM's short forms (``-tp``, ``-pp``, ``-dp``).

Every flag defaults to ``None`` ("not given"), so ``engine_kwargs_from_args`` passes to the
engine only what the user typed and the config dataclasses keep owning the defaults and the
validation. A field of any other type makes ``add_engine_args`` raise ``TypeError``: a new
config field must either use a supported type or extend this module.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import types
import typing

from pagellm.config.engine_args import CONFIG_CLASSES, engine_arg_fields, field_docs

_SCALAR_TYPES = (int, float, str)

SHORT_FLAGS = {"tensor_parallel_size": "-tp", "pipeline_parallel_size": "-pp",
               "data_parallel_size": "-dp"}
"""vLLM's short forms of some flags (``-tp 2`` = ``--tensor-parallel-size 2``)."""


def flag_name(field_name: str) -> str:
    """``max_num_seqs`` -> ``--max-num-seqs``."""
    return "--" + field_name.replace("_", "-")


def add_engine_args(parser: argparse.ArgumentParser,
                    exclude: typing.Collection[str] = ()) -> argparse.ArgumentParser:
    """Add one flag per engine argument (except the names in ``exclude``) to ``parser``, in
    one argument group per config class. Returns ``parser``. Raises ``TypeError`` for a
    config field whose type has no command-line form."""
    for cls in CONFIG_CLASSES:
        group = parser.add_argument_group(f"engine arguments ({cls.__name__})")
        hints = typing.get_type_hints(cls)
        docs = field_docs(cls)
        for field in dataclasses.fields(cls):
            if field.name in exclude:
                continue
            _add_field_flag(group, field, hints[field.name], docs.get(field.name, ""))
    return parser


def engine_kwargs_from_args(namespace: argparse.Namespace) -> dict:
    """The engine arguments the user gave: ``{field_name: value}`` for every engine flag that
    is not ``None`` in ``namespace``. Names absent from the namespace are skipped."""
    return {name: getattr(namespace, name) for name in engine_arg_fields()
            if getattr(namespace, name, None) is not None}


def _add_field_flag(group, field: dataclasses.Field, hint, doc: str) -> None:
    base = _base_type(hint, field.name)
    default = field.default if field.default is not dataclasses.MISSING else None
    help_text = f"{doc} (default: {default})".replace("%", "%%")
    kwargs: dict = dict(dest=field.name, default=None, help=help_text)
    if base is bool:
        kwargs["action"] = argparse.BooleanOptionalAction
    elif base is dict:
        kwargs.update(type=json_object_arg, metavar="JSON")
    else:
        kwargs["type"] = base
    short = (SHORT_FLAGS[field.name],) if field.name in SHORT_FLAGS else ()
    group.add_argument(flag_name(field.name), *short, **kwargs)


def _base_type(hint, name: str) -> type:
    """``int`` for ``int`` or ``int | None``; ``dict`` for ``dict[...]``; else TypeError."""
    args = [arg for arg in typing.get_args(hint) if arg is not type(None)]
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        if len(args) != 1:
            raise TypeError(f"engine argument {name!r} has type {hint}; only X or X | None "
                            "has a command-line form")
        hint = args[0]
    origin = typing.get_origin(hint) or hint
    if origin is dict or origin is bool or origin in _SCALAR_TYPES:
        return origin
    raise TypeError(f"engine argument {name!r} has type {hint}, which has no command-line form; "
                    "extend pagellm.config.cli_args.py")


def json_object_arg(text: str) -> dict:
    """argparse type of the dict-valued flags: ``text`` parsed as a JSON object;
    ArgumentTypeError (quoting ``text``) otherwise."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise argparse.ArgumentTypeError(f"not valid JSON ({error}): {text!r}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {text!r}")
    return value
