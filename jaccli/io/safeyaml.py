"""YAML as data only: ``yaml.safe_load``'s loader with anchors and aliases refused.

Shared by array sources (:mod:`jaccli.io.inputs`) and config files (:mod:`jaccli.cli.configs`), so
both refuse the same things with the same messages. Imports neither numpy nor torch.
"""

from __future__ import annotations

from typing import Any

from jaccli.errors import InputError

# YAML 1.2 floats that YAML 1.1 (PyYAML) reads as strings: 1e-3, 2E5, nan, inf, -Infinity.
_FLOAT_12 = (
    r"^(?:[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9][0-9_]*)[eE][-+]?[0-9]+"
    r"|[-+]?(?:inf|Inf|INF|infinity|Infinity)|nan|NaN|NAN)$"
)


def _with_floats(loader: type) -> type:
    """``loader`` with YAML 1.2's float spellings resolved as floats (only for plain scalars:
    a quoted "1e-3" stays a string)."""
    import re

    first = list("-+0123456789.iInN")
    loader.add_implicit_resolver("tag:yaml.org,2002:float", re.compile(_FLOAT_12), first)
    return loader


def _no_alias_loader():
    """yaml.SafeLoader that refuses aliases (*name): a few lines of them can expand into
    billions of elements ("billion laughs"), and array data never needs them."""
    import yaml

    class NoAliasLoader(yaml.SafeLoader):
        def compose_node(self, parent, index):  # noqa: ANN001 - PyYAML's signature
            if self.check_event(yaml.events.AliasEvent):
                event = self.peek_event()
                mark = event.start_mark
                raise _AliasRefused(
                    f"an alias *{event.anchor} at line {mark.line + 1}, column {mark.column + 1}"
                )
            return super().compose_node(parent, index)

    return _with_floats(NoAliasLoader)


def _fast_loader():
    """libyaml's C parser with SafeLoader's constructor (the same safe_load semantics), many
    times faster than the pure-Python one; None where PyYAML was built without libyaml."""
    import yaml

    if not getattr(yaml, "__with_libyaml__", False):
        return None

    class FastLoader(yaml.CSafeLoader):
        pass

    return _with_floats(FastLoader)


FAST_MAX_DEPTH = 1000  # libyaml composes nodes by recursion in C: ~100,000 levels overflow its stack


def shallow(text: str, limit: int = FAST_MAX_DEPTH) -> bool:
    """Whether a YAML text is surely nested less than ``limit`` deep, without parsing it: its
    brackets (quoted ones too) nest less than half of it, and no line starts with half of it
    in indentation and '-'/'?' indicators (each block level takes at least one such character)."""
    import re
    from itertools import accumulate

    half = limit // 2
    if text.count("[") + text.count("{") >= half:
        brackets = re.sub(r"[^\[\]{}]+", "", text)
        if max(accumulate(1 if c in "[{" else -1 for c in brackets), default=0) >= half:
            return False
    return re.search(rf"(?m)^[ \t?-]{{{half},}}", text) is None


def _loader_for(text: str):
    """The C loader when the text cannot hold an alias (no '*' anywhere) and is not nested
    deeply enough to overflow C's stack; else the pure-Python one, which refuses aliases
    (libyaml composes them in C, where they cannot be refused) and deep nesting (RecursionError)."""
    if "*" not in text and shallow(text):
        fast = _fast_loader()
        if fast is not None:
            return fast
    return _no_alias_loader()


class _AliasRefused(Exception):
    pass


def load(text: str, origin: str) -> Any:
    """The document in ``text``; any problem is an InputError naming ``origin`` and the place."""
    import yaml

    try:
        return yaml.load(text, Loader=_loader_for(text))  # a safe loader: no tags run code
    except _AliasRefused as exc:
        raise InputError(
            f"{origin}: YAML anchors and aliases are refused ({exc}): they can expand without "
            "bound; write the values out, or save the array as .npy"
        ) from None
    except RecursionError:
        raise InputError(f"{origin}: YAML nested too deeply to parse; is the file right?") from None
    except yaml.constructor.ConstructorError as exc:
        if "tag" not in str(exc.problem):
            raise InputError(f"{origin} is not valid YAML: {exc.problem}") from exc
        raise InputError(
            f"{origin}: YAML tag refused ({exc.problem}); jac reads plain numbers, lists and mappings only"
        ) from exc
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        reason = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise InputError(f"{origin} is not valid YAML{where}: {reason}") from exc
