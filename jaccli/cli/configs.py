"""Config files: YAML that sets a command's options, for ``jac run FILE`` and ``--config FILE``.

A config is read into a click ``default_map`` for one command, so options given on the
command line override it, exactly as they override built-in defaults. Everything is checked
against the command's own click parameters (options added later are picked up with no change
here) before anything runs, and every problem is an InputError naming the file and the key.
Relative paths resolve against the config's folder, so a config works from any directory.
Imports neither numpy nor torch.
"""

from __future__ import annotations

import difflib
import json
import os
from typing import Any

import click

from jaccli.errors import InputError, quoted

KEYS = ("command", "function", "primals", "tangents", "cotangents", "kwargs", "out", "options")
# Top-level keys and the click parameter each one fills.
_TOP_PARAMS = {
    "function": "func",
    "primals": "values_primals",
    "tangents": "values_tangents",
    "cotangents": "values_cotangents",
    "kwargs": "kwargs",
    "out": "out",
}
_SOURCE_KEYS = ("primals", "tangents", "cotangents")
_DATA_SUFFIXES = (".npy", ".npz", ".yaml", ".yml", ".json")  # a source with one of these is a path
_NOT_OPTIONS = ("config", "help", "version")  # what a config cannot set
_MAX_BYTES = 2**20  # configs are a few lines; anything larger is the wrong file


def read(path: str) -> dict[str, Any]:
    """The config at ``path`` as a mapping whose top-level keys are all known."""
    from jaccli.io import safeyaml

    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read(_MAX_BYTES + 1)
    except FileNotFoundError:
        raise InputError(f"config {path} does not exist") from None
    except IsADirectoryError:
        raise InputError(f"config {path} is a folder; give a .yaml file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"config {path} cannot be read: {exc}") from None
    if len(text) > _MAX_BYTES:
        raise InputError(f"config {path} is over {_MAX_BYTES // 2**20} MiB; is it a config?")
    doc = safeyaml.load(text, f"config {path}")
    if not isinstance(doc, dict):
        raise InputError(
            f"config {path} holds {_kind(doc)}; a config is a mapping with keys {', '.join(KEYS)}"
        )
    for key in doc:
        _check_key(path, key, KEYS, "keys")
    return doc


def command_of(path: str, commands: list[str]) -> str:
    """The command a config names, for ``jac run``."""
    doc = read(path)
    if "command" not in doc:
        raise InputError(f"config {path}: missing key 'command': name one of {', '.join(commands)}")
    name = doc["command"]
    if not isinstance(name, str):
        raise InputError(f"config {path}: 'command' must be a string (one of {', '.join(commands)})")
    if name not in commands:
        raise InputError(
            f"config {path}: 'command: {name}' is not a jac command{_nearest(name, commands)} "
            f"(commands: {', '.join(commands)})"
        )
    return name


def defaults(path: str, ctx: click.Context) -> dict[str, Any]:
    """The ``default_map`` for the command of ``ctx`` from the config at ``path``, checked."""
    doc = read(path)
    name = ctx.info_name or ctx.command.name
    if "command" in doc and doc["command"] != name:
        raise InputError(
            f"config {path} is for 'jac {doc['command']}', not 'jac {name}': use it with "
            f"'jac run {path}' or remove its 'command' key"
        )
    params = {p.name: p for p in ctx.command.params}
    folder = os.path.dirname(path)
    found: dict[str, Any] = {}
    for key, value in doc.items():
        if key in ("command", "options"):
            continue
        param = params.get(_TOP_PARAMS[key])
        if param is None:
            raise InputError(f"config {path}: 'jac {name}' takes no {key!r}; remove it")
        where = f"config {path}: {key!r}"
        found[param.name] = _top_level(key, value, param, ctx, folder, where)
    options = doc.get("options") or {}
    if not isinstance(options, dict):
        raise InputError(f"config {path}: 'options' must be a mapping of option names to values")
    by_name = _option_names(ctx.command)
    for key, value in options.items():
        _check_key(path, key, by_name, f"options of 'jac {name}'", prefix="options.")
        param = by_name[_normal(key)]
        where = f"config {path}: 'options.{key}'"
        if value is None:
            raise InputError(f"{where} has no value; give one or remove the key")
        value = _convert(param, value, ctx, where)
        if param.metavar == "PATH" and isinstance(value, str):
            value = _resolve(folder, value)
        found[param.name] = value
    return found


def _top_level(key: str, value: Any, param: click.Parameter, ctx: click.Context, folder: str, where: str):
    if value is None:
        raise InputError(f"{where} has no value; give one or remove the key")
    if key == "kwargs":
        if not isinstance(value, dict) or not all(isinstance(k, str) and k.isidentifier() for k in value):
            raise InputError(f"{where} must be a mapping NAME: VALUE, e.g. {{scale: 2.0}}")
        return [(k, v) for k, v in value.items()]
    if key in _SOURCE_KEYS:
        items = value if isinstance(value, list) else [value]
        return [_source(folder, item, where) for item in items]
    if not isinstance(value, str):
        raise InputError(f"{where} must be a string, not {_kind(value)}")
    if key == "out":
        return _resolve(folder, value)
    return _resolve_func(folder, _convert(param, value, ctx, where))


def _source(folder: str, item: Any, where: str) -> str:
    """One input source as the command line would write it, a relative path made the config's."""
    if isinstance(item, bool) or item is None:
        raise InputError(
            f"{where}: {quoted(item)} is not an input source; give a file, a literal or a generator"
        )
    if isinstance(item, (int, float)):
        return repr(item)
    if isinstance(item, (list, dict)):
        return json.dumps(item)  # an inline literal, read as YAML
    if not isinstance(item, str):
        raise InputError(f"{where}: {quoted(item)} is not an input source")
    candidate = os.path.join(folder, item)
    if item != "-" and (item.lower().endswith(_DATA_SUFFIXES) or os.path.exists(candidate)):
        return _resolve(folder, item)
    return item  # a generator (randn:3) or an inline literal


def _resolve(folder: str, path: str) -> str:
    if path == "-" or os.path.isabs(path):
        return path
    return os.path.normpath(os.path.join(folder, os.path.expanduser(path)))


def _resolve_func(folder: str, func: str) -> str:
    """``path/file.py:name`` resolves against the config's folder; ``module:name`` imports as usual."""
    from jaccli.io.loading import parse_spec

    spec = parse_spec(func)
    if not spec.is_path:
        return func
    target, _, rest = func.rpartition(":")
    return f"{_resolve(folder, target)}:{rest}"


def _convert(param: click.Parameter, value: Any, ctx: click.Context, where: str) -> Any:
    """``value`` through the option's own click type; a wrong type names the key and what it takes."""
    from jaccli.cli.options import ArgnumsType

    if param.multiple:
        items = value if isinstance(value, list) else [value]
        return [_convert_one(param, item, ctx, where) for item in items]
    if isinstance(value, list) and isinstance(param.type, ArgnumsType):
        if not value or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            raise InputError(f"{where} must be an index or a list of indices such as [0, 1]")
        return tuple(value)
    return _convert_one(param, value, ctx, where)


def _convert_one(param: click.Parameter, value: Any, ctx: click.Context, where: str) -> Any:
    expected = _expected(param)
    if getattr(param, "is_flag", False):
        if not isinstance(value, bool):
            raise InputError(f"{where} must be {expected}, not {_kind(value)}")
        return value
    wrong = isinstance(value, (bool, list, dict)) or (
        isinstance(param.type, click.types.IntParamType) and isinstance(value, float)
    )
    if wrong:
        raise InputError(f"{where} must be {expected}, not {_kind(value)}")
    try:
        return param.type.convert(value, param, ctx)
    except click.BadParameter as exc:
        raise InputError(f"{where}: {exc.message.rstrip('.')} (expected {expected})") from None


def _expected(param: click.Parameter) -> str:
    kind = param.type
    if getattr(param, "is_flag", False):
        return "true or false"
    if isinstance(kind, click.Choice):
        return "one of " + ", ".join(map(str, kind.choices))
    if isinstance(kind, click.types.IntParamType):
        return "an integer"
    if isinstance(kind, click.types.FloatParamType):
        return "a number"
    return f"a {param.metavar}" if param.metavar else "a string"


def _option_names(command: click.Command) -> dict[str, click.Parameter]:
    """Each long option name (dashes as underscores) the config may set, to its parameter."""
    top = set(_TOP_PARAMS.values())
    names = {}
    for param in command.params:
        if not isinstance(param, click.Option) or param.name in top:
            continue
        for opt in param.opts + param.secondary_opts:
            name = _normal(opt)
            if opt.startswith("--") and name not in _NOT_OPTIONS:
                names[name] = param
    return names


def _normal(key: Any) -> str:
    return str(key).lstrip("-").replace("-", "_")


def _check_key(path: str, key: Any, valid: Any, what: str, prefix: str = "") -> None:
    """An unknown key names the file, the nearest valid key and all of them."""
    name = _normal(key) if prefix else key
    if name in valid:
        return
    shown = sorted(k.replace("_", "-") for k in valid) if prefix else list(valid)
    hint = _nearest(str(key), shown)
    if prefix and name in ("primals", "tangents", "cotangents", "kwarg", "kwargs", "out"):
        hint = f"; {key!r} goes at the top level of the config, not under 'options'"
    raise InputError(f"config {path}: unknown key '{prefix}{key}'{hint} (valid {what}: {', '.join(shown)})")


def _nearest(word: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(word.replace("_", "-"), choices, n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


def _kind(value: Any) -> str:
    from jaccli.errors import kind_of

    names = {
        bool: "a boolean",
        list: "a list",
        dict: "a mapping",
        str: "a string",
        float: "a number",
        int: "an integer",
    }
    return names.get(type(value), kind_of(value))


def missing(path: str, param: click.Parameter | None) -> InputError:
    """A required value neither the config nor the command line gave, named as the config's key."""
    keys = {v: k for k, v in _TOP_PARAMS.items()}
    name = param.name if param is not None else "?"
    key = keys.get(name, f"options.{name}")
    flag = "FUNC" if name == "func" else "/".join(getattr(param, "opts", [])) or name
    return InputError(f"config {path}: missing key {key!r}; add it, or give {flag} after the config")
