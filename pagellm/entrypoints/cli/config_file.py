"""``pagellm serve --config FILE``: flags from a YAML or JSON file, as vLLM's ``--config``.

The file is one mapping whose keys are flag names without the dashes, spelled with dashes or
underscores (``max-num-seqs: 128`` or ``max_num_seqs: 128``); ``model`` names the model.
Values become command-line tokens placed *before* the flags typed on the command line, so a
flag given on the command line wins over the file (vLLM's rule):

- ``true`` / ``false`` -> ``--flag`` / ``--no-flag`` (a plain switch such as
  ``disable-log-requests`` takes only ``true``);
- a mapping -> its JSON (``compilation-config: {level: 0}``);
- a list -> the flag once with every item (a flag of several values; a one-value flag
  refuses a list);
- anything else -> ``--flag VALUE``; ``null`` is "not given".

``pagellm tune`` writes its best configuration in this format. A missing or unreadable file,
a file that is not one mapping, or a key that is no flag of the command is a ``ClientError``
naming the file and the key.
"""

from __future__ import annotations

import argparse
import difflib
import json
from collections.abc import Sequence
from pathlib import Path

from pagellm.config.cli_args import json_object_arg
from pagellm.errors import ClientError

CONFIG_FLAG = "--config"


def expand_config_flag(parser: argparse.ArgumentParser, argv: Sequence[str]) -> list[str]:
    """``argv`` (a subcommand's arguments, without the subcommand) preceded by the flags of
    the file of its ``--config FILE`` / ``--config=FILE``, so the typed flags override them
    (``--config`` itself stays, for ``args.config``). ``argv`` unchanged without ``--config``. Raises ClientError (see the module
    docstring)."""
    path = _config_path(list(argv))
    if path is None:
        return list(argv)
    return config_file_to_argv(parser, path) + list(argv)


def _config_path(argv: list[str]) -> str | None:
    """The FILE of ``--config FILE`` or ``--config=FILE`` in ``argv`` (None without one)."""
    paths = []
    for index, token in enumerate(argv):
        if token == "--":
            break
        if token == CONFIG_FLAG:
            if index + 1 >= len(argv) or argv[index + 1].startswith("--"):
                raise ClientError("--config needs a file: --config FILE.yaml", param="config")
            paths.append(argv[index + 1])
        elif token.startswith(CONFIG_FLAG + "="):
            paths.append(token.split("=", 1)[1])
    if len(paths) > 1:
        raise ClientError("--config given more than once; pass one file", param="config")
    return paths[0] if paths else None


def load_config_file(path: str | Path) -> dict:
    """The mapping in a ``.yaml``/``.yml``/``.json`` file (YAML is a superset of JSON, so any
    other suffix is read as YAML). ClientError when it cannot be read or is not a mapping."""
    import yaml

    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as error:
        raise ClientError(f"--config {str(path)!r}: cannot read the file ({error.strerror})",
                          param="config") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ClientError(f"--config {str(path)!r} is not valid YAML or JSON: "
                          f"{' '.join(str(error).split())}", param="config") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ClientError(f"--config {str(path)!r} must hold one mapping of flag names to "
                          f"values (e.g. 'max-num-seqs: 128'), got a {type(data).__name__}",
                          param="config")
    return data


def config_file_to_argv(parser: argparse.ArgumentParser, path: str | Path) -> list[str]:
    """The file's flags as argv tokens for ``parser``. ClientError for a key that is not
    one of ``parser``'s flags (with the closest flag) or a value of the wrong kind."""
    actions = _long_options(parser)
    tokens: list[str] = []
    for key, value in load_config_file(path).items():
        flag = "--" + str(key).strip().lstrip("-").replace("_", "-")
        if flag not in actions:
            close = difflib.get_close_matches(flag, list(actions), n=1)
            hint = f"; did you mean {close[0][2:]!r}?" if close else ""
            raise ClientError(f"--config {str(path)!r}: unknown key {key!r}{hint}",
                              param="config")
        if value is not None:
            tokens += _tokens_for(flag, value, actions[flag], path, key)
    return tokens


def _long_options(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """``--flag`` -> its action, for every long option but --help and --config itself."""
    options = {}
    for action in parser._actions:      # argparse keeps no public list of its actions
        for option in action.option_strings:
            if option.startswith("--") and option not in ("--help", CONFIG_FLAG):
                options[option] = action
    return options


def _tokens_for(flag: str, value, action: argparse.Action, path, key) -> list[str]:
    switch = isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction))
    if isinstance(action, argparse.BooleanOptionalAction) or switch:
        if not isinstance(value, bool):
            raise ClientError(f"--config {str(path)!r}: {key!r} takes true or false, got "
                              f"{value!r}", param="config")
        if switch and not value:
            return []
        return [flag if value else "--no-" + flag[2:]]
    if isinstance(value, bool):
        raise ClientError(f"--config {str(path)!r}: {key!r} takes a value, not {value!r}",
                          param="config")
    if isinstance(value, dict) or action.type is json_object_arg:   # a JSON flag: one token
        text = json.dumps(value)
        _check_value(action, text, path, key)
        return [flag, text]
    if isinstance(value, list) and action.nargs in (None, "?"):     # a one-value flag
        raise ClientError(f"--config {str(path)!r}: {key!r} takes one value, not a list "
                          f"({value!r})", param="config")
    items = [str(item) for item in value] if isinstance(value, list) else [str(value)]
    for item in items:
        _check_value(action, item, path, key)
    return [flag, *items]


def _check_value(action: argparse.Action, text: str, path, key) -> None:
    """ClientError naming the file and key when the flag's type or choices refuse ``text``
    (argparse would refuse it too, but without saying it came from the file)."""
    try:
        value = action.type(text) if callable(action.type) else text
    except (ValueError, TypeError, argparse.ArgumentTypeError) as error:
        reason = (str(error) if isinstance(error, argparse.ArgumentTypeError)
                  else f"not a valid {getattr(action.type, '__name__', 'value')}")
        got = "" if repr(text) in reason else f" (got {text!r})"
        raise ClientError(f"--config {str(path)!r}: {key!r}: {reason}{got}",
                          param="config") from None
    if action.choices is not None and value not in action.choices:
        raise ClientError(f"--config {str(path)!r}: {key!r} must be one of "
                          f"{', '.join(map(str, action.choices))}, got {text!r}",
                          param="config")
