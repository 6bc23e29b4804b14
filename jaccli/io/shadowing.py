"""jac's own imports are never shadowed by the user's files.

jac imports numpy, yaml, rich, torch's lazy modules and parts of the standard library when it
first needs them, which is often after the user's folder (a FUNC's folder, the current one) is
on ``sys.path``. A ``yaml.py`` or ``numpy.py`` there would then be imported, and run, in their
place. :class:`Guard`, first on ``sys.meta_path``, resolves those names from every ``sys.path``
entry except the user's folders; a name found nowhere else (a package vendored in the user's
folder) falls through to Python's usual search. The user's own modules import as before.

(``python -m jaccli`` itself is found by Python before jac runs: a ``jaccli.py`` in the current
folder runs instead of jac; the README says so.)
"""

from __future__ import annotations

import importlib.machinery
import os
import sys
from typing import Any

# Top-level import names of jac's dependencies and of theirs that are imported lazily.
DEPENDENCIES = frozenset(
    """numpy yaml _yaml torch torchgen functorch rich click matplotlib mpl_toolkits scipy markdown_it
    mdurl pygments sympy mpmath networkx jinja2 markupsafe filelock fsspec typing_extensions PIL
    pyparsing cycler kiwisolver fontTools dateutil packaging six contourpy triton psutil
    opt_einsum optree""".split()
)
PROTECTED = DEPENDENCIES | frozenset(getattr(sys, "stdlib_module_names", ()))

_user_folders: set[str] = set()
_allowed: set[str] = set()


def allow(name: str) -> None:
    """A top-level name the user asked for by name (FUNC ``code:f`` with a ``code.py`` here):
    Python's usual search, which finds the user's file first."""
    _allowed.add(name)


def add_user_folder(folder: str) -> None:
    """A folder put on sys.path for the user's modules: jac's imports skip it."""
    _user_folders.add(os.path.abspath(folder))


def _skipped(entry: str, cwd: str) -> bool:
    if entry in ("", "."):
        return True
    absolute = os.path.abspath(entry)
    return absolute == cwd or absolute in _user_folders


class Guard:
    """A meta path finder for protected top-level names only (see the module's docstring)."""

    @classmethod
    def find_spec(cls, name: str, path: Any = None, target: Any = None) -> Any:
        if path is not None or name not in PROTECTED or name in _allowed or name in sys.builtin_module_names:
            return None  # submodules follow their package; builtins need no path
        try:
            cwd = os.getcwd()
        except OSError:
            cwd = ""
        search = [entry for entry in sys.path if isinstance(entry, str) and not _skipped(entry, cwd)]
        if len(search) == len(sys.path):
            return None  # no user folder on the path: Python's own search is the same
        return importlib.machinery.PathFinder.find_spec(name, search)

    @classmethod
    def invalidate_caches(cls) -> None:
        pass


def install() -> None:
    """Put the guard first on sys.meta_path (once)."""
    if not any(finder is Guard for finder in sys.meta_path):
        sys.meta_path.insert(0, Guard)
