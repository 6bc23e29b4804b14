"""Finding the user's function: ``pkg.mod:name``, ``path/file.py:name``, dotted names, ``mod:factory()``.

Modules are imported with importlib, never ``exec``; each step that can fail says which one.
A missing module or name is an input error (exit 2); an exception raised by the user's own
code while importing the module or calling a factory is a function error (exit 3).
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import os
import sys
from dataclasses import dataclass
from typing import Any, Callable

from jaccli.errors import FunctionError, InputError, describe, kind_of, quoted
from jaccli.io import shadowing


@dataclass(frozen=True)
class FuncSpec:
    """A parsed ``TARGET:ATTR[()]``: ``target`` is a module name or a ``.py`` path."""

    target: str
    attrs: tuple[str, ...]
    call_factory: bool

    @property
    def is_path(self) -> bool:
        return self.target.endswith(".py") or "/" in self.target or os.sep in self.target

    def __str__(self) -> str:
        return f"{self.target}:{'.'.join(self.attrs)}{'()' if self.call_factory else ''}"


def parse_spec(text: str) -> FuncSpec:
    """Check the form of FUNC without importing anything."""
    hint = "write MODULE:NAME or path/to/file.py:NAME, e.g. mymod:f"
    target, sep, attr = text.rpartition(":")
    if not sep or not target or not attr:
        raise InputError(f"FUNC {quoted(text)} has no ':NAME'; {hint}")
    call = attr.endswith("()")
    if call:
        attr = attr[:-2]
    attrs = tuple(attr.split("."))
    if not all(part.isidentifier() for part in attrs):
        raise InputError(f"FUNC {quoted(text)}: {attr!r} is not a (dotted) Python name; {hint}")
    if "(" in attr or ")" in attr:
        raise InputError(f"FUNC {quoted(text)}: only a zero-argument factory call 'NAME()' is allowed")
    spec = FuncSpec(target, attrs, call)
    if not spec.is_path and not all(part.isidentifier() for part in target.split(".")):
        raise InputError(f"FUNC {quoted(text)}: {target!r} is neither a module name nor a .py path; {hint}")
    return spec


def load_function(spec: str | FuncSpec) -> Callable[..., Any]:
    """Import the module FUNC names and return the callable (an ``nn.Module`` is called as is)."""
    if isinstance(spec, str):
        spec = parse_spec(spec)
    shadowing.install()  # the user's yaml.py or numpy.py never stands in for jac's own imports
    module = _import_path(spec) if spec.is_path else _import_module(spec)
    obj: Any = module
    walked = spec.target
    for attr in spec.attrs:
        if not hasattr(obj, attr):
            raise InputError(f"{walked} has no attribute {attr!r}{_suggest(obj)}")
        try:
            obj = getattr(obj, attr)
        except (Exception, SystemExit) as exc:  # a property of the user's raised
            raise FunctionError(f"reading {walked}.{attr} raised {describe(exc)}") from exc
        walked = f"{walked}.{attr}" if walked != spec.target else f"{walked}:{attr}"
    if spec.call_factory:
        if not callable(obj):
            raise InputError(f"{walked} is {kind_of(obj)}, not a factory; drop the '()'")
        try:
            obj = obj()
        except TypeError as exc:
            if _needs_arguments(obj):
                raise InputError(
                    f"{walked}() needs arguments; jac calls factories with none: wrap it in a "
                    "zero-argument function"
                ) from exc
            raise FunctionError(f"calling the factory {spec} raised {describe(exc)}") from exc
        except (Exception, SystemExit) as exc:
            raise FunctionError(f"calling the factory {spec} raised {describe(exc)}") from exc
        walked = str(spec)
    if isinstance(obj, type):
        raise InputError(
            f"{walked} is a class; write {spec}() to construct it with no arguments, or point at "
            "an instance or a function"
        )
    if not callable(obj):
        raise InputError(f"{walked} is {kind_of(obj)}, not a function; point FUNC at a callable")
    if (
        inspect.isgeneratorfunction(obj)
        or inspect.iscoroutinefunction(obj)
        or inspect.isasyncgenfunction(obj)
    ):
        raise InputError(
            f"{walked} is a generator or async function; jac needs a plain function returning tensors"
        )
    return obj


def _import_module(spec: FuncSpec):
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)  # as 'python -m' does
    shadowing.allow(spec.target.split(".")[0])  # the user's own code.py, test.py: as python -m finds it
    try:
        module = importlib.import_module(spec.target)
    except ModuleNotFoundError as exc:
        missing = (exc.name or "").split(".")
        if spec.target.split(".")[: len(missing)] == missing:  # the named module, not a dependency
            example = f"path/to/{spec.target.split('.')[-1]}.py:{'.'.join(spec.attrs)}"
            raise InputError(
                f"no module named {exc.name!r} (looked in the current folder and the Python "
                f"path); run jac from the folder that holds it, or give a path: {example}"
            ) from exc
        raise FunctionError(f"importing {spec.target} raised {describe(exc)}") from exc
    except (Exception, SystemExit) as exc:
        raise FunctionError(f"importing {spec.target} raised {describe(exc)}") from exc
    _check_not_taken(spec, module, cwd)
    return module


def _check_not_taken(spec: FuncSpec, module: Any, cwd: str) -> None:
    """``calendar:f`` with a calendar.py here, when the standard library's calendar (or another
    installed module of that name) was imported first: say so rather than 'has no attribute f'."""
    local = os.path.join(cwd, *spec.target.split(".")) + ".py"
    where = getattr(module, "__file__", None)
    if os.path.isfile(local) and where and os.path.abspath(where) != os.path.abspath(local):
        raise InputError(
            f"{spec.target} names the installed module {where}, imported before yours; give your file "
            f"as a path: {os.path.relpath(local)}:{'.'.join(spec.attrs)}{'()' if spec.call_factory else ''}"
        )


def _import_path(spec: FuncSpec):
    path = os.path.abspath(spec.target)
    if not os.path.isfile(path):
        what = "is a folder" if os.path.isdir(path) else "does not exist"
        raise InputError(f"FUNC file {spec.target} {what}; give an existing .py file")
    name = "_jac_user_" + os.path.splitext(os.path.basename(path))[0].replace("-", "_")
    module_spec = importlib.util.spec_from_file_location(name, path)
    if module_spec is None or module_spec.loader is None:
        raise InputError(f"FUNC file {spec.target} cannot be imported; is it a .py file?")
    module = importlib.util.module_from_spec(module_spec)
    folder = os.path.dirname(path)
    shadowing.add_user_folder(folder)
    if folder not in sys.path:
        sys.path.insert(0, folder)  # as 'python file.py' does: sibling modules import
    sys.modules[name] = module
    try:
        module_spec.loader.exec_module(module)
    except (Exception, SystemExit) as exc:
        sys.modules.pop(name, None)
        if isinstance(exc, ImportError) and "relative import" in str(exc):
            raise InputError(_relative_import_hint(spec, path, exc)) from exc
        raise FunctionError(f"importing {spec.target} raised {describe(exc)}") from exc
    return module


def _relative_import_hint(spec: FuncSpec, path: str, exc: BaseException) -> str:
    """A file inside a package that imports relatively (``from . import x``) must be imported
    as a module of its package: name it ``pkg.sub:fn``, from the folder above the package."""
    parts = [os.path.splitext(os.path.basename(path))[0]]
    folder = os.path.dirname(path)
    while os.path.isfile(os.path.join(folder, "__init__.py")):
        parts.insert(0, os.path.basename(folder))
        folder = os.path.dirname(folder)
    attrs = ".".join(spec.attrs) + ("()" if spec.call_factory else "")
    if len(parts) == 1:
        return (
            f"importing {spec.target} raised {describe(exc)}: it uses relative imports but its "
            "folder is no package; add an __init__.py there and name it pkg.module:NAME"
        )
    where = os.path.relpath(folder) if folder != os.getcwd() else "."
    return (
        f"{spec.target} uses relative imports, so it must be imported as part of its package: "
        f"use {'.'.join(parts)}:{attrs} (run from {where})"
    )


def parse_kwarg(text: str) -> tuple[str, Any]:
    """``NAME=VALUE`` with VALUE read as YAML (``scale=4.0``, ``mode=fast``, ``dims=[0,1]``)."""
    name, sep, value = text.partition("=")
    name = name.strip()
    if not sep or not name.isidentifier():
        raise InputError(f"--kwarg {quoted(text)}: write NAME=VALUE, e.g. --kwarg scale=4.0")
    import yaml

    try:
        return name, yaml.safe_load(value) if value.strip() else ""
    except yaml.YAMLError as exc:
        raise InputError(f"--kwarg {name}: {quoted(value)} is not valid YAML") from exc


def check_call(func: Callable[..., Any], n_args: int, kwargs: dict[str, Any], spec: str) -> None:
    """Fail before any work when the arguments cannot bind to the function's signature."""
    try:
        signature = inspect.signature(func)
    except (TypeError, ValueError):
        return  # builtins and some C functions have none: let the call decide
    try:
        signature.bind(*range(n_args), **kwargs)
    except TypeError as exc:
        raise InputError(
            f"{spec}{signature} cannot take {n_args} positional argument(s)"
            f"{' and --kwarg ' + ', '.join(kwargs) if kwargs else ''}: {exc}"
        ) from exc


def _suggest(obj: Any) -> str:
    names = sorted(n for n in dir(obj) if not n.startswith("_") and callable(getattr(obj, n, None)))
    if not names:
        return ""
    shown = ", ".join(names[:12]) + (", ..." if len(names) > 12 else "")
    return f" (callables there: {shown})"


def _needs_arguments(obj: Any) -> bool:
    try:
        inspect.signature(obj).bind()
    except TypeError:
        return True
    except ValueError:
        return False
    return False
