"""Nested outputs (tensors in tuples, lists and dicts) and the dotted key of each leaf.

Keys follow the contract: the path of a leaf in what torch.func returns, parts joined by
``.``; tuple and list positions are numbers, dict entries their keys.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Callable, Sequence


def is_node(obj: Any) -> bool:
    return isinstance(obj, (tuple, list, dict))


def _children(node: Any) -> Iterator[tuple[str, Any]]:
    if isinstance(node, dict):
        for key, value in node.items():
            yield str(key), value
    else:
        for index, value in enumerate(node):
            yield str(index), value


def join(prefix: str, part: str) -> str:
    return f"{prefix}.{part}" if prefix and part else prefix or part


def leaves(tree: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """``[(key, leaf), ...]`` in order; a bare leaf has the key ``prefix``."""
    if not is_node(tree):
        return [(prefix, tree)]
    out: list[tuple[str, Any]] = []
    for part, child in _children(tree):
        out.extend(leaves(child, join(prefix, part)))
    return out


def map_leaves(fn: Callable[[Any], Any], tree: Any) -> Any:
    """The same structure, namedtuples included, with ``fn`` applied to every leaf."""
    if isinstance(tree, dict):
        return {key: map_leaves(fn, value) for key, value in tree.items()}
    if isinstance(tree, list):
        return [map_leaves(fn, value) for value in tree]
    if isinstance(tree, tuple):
        mapped = [map_leaves(fn, value) for value in tree]
        return type(tree)(*mapped) if hasattr(tree, "_fields") else tuple(mapped)
    return fn(tree)


def unflatten(tree: Any, values: list[Any]) -> Any:
    """``tree``'s structure filled with ``values`` in leaf order."""
    it = iter(values)
    return map_leaves(lambda _leaf: next(it), tree)


def rebuilder(tree: Any) -> Callable[[Sequence[Any]], Any]:
    """A function putting leaves, in :func:`leaves` order, back into ``tree``'s structure.

    Built once for calls repeated many times (``--compile``'s steady state): it costs a few
    dict and tuple constructions a call, where :func:`unflatten` walks the tree every time.
    """
    count = 0

    def build(node: Any) -> Callable[[Sequence[Any]], Any]:
        nonlocal count
        if isinstance(node, dict):
            items = [(key, build(value)) for key, value in node.items()]
            return lambda values: {key: part(values) for key, part in items}
        if isinstance(node, (tuple, list)):
            parts = [build(value) for value in node]
            kind = type(node)
            if hasattr(node, "_fields"):
                return lambda values: kind(*[part(values) for part in parts])
            return lambda values: kind([part(values) for part in parts])
        index, count = count, count + 1
        return lambda values: values[index]

    return build(tree)
