"""The four transforms over torch.func, and the names of what they return.

``compute`` is the library entry for tensors already in hand::

    >>> import torch
    >>> from jaccli.transforms import compute
    >>> tree = compute("jvp", torch.sin, [torch.zeros(3)], tangents=[torch.ones(3)])
    >>> tree["jvp"]
    tensor([1., 1., 1.])

It returns a dict tree keyed as the contract names results (``output``, ``jvp``, ``vjp``,
``jacobian``, ``aux``); ``trees.leaves`` turns it into dotted keys. Any exception raised while
the user's function or its derivative runs becomes a FunctionError (exit 3).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Callable

from jaccli import trees
from jaccli.errors import FunctionError, InputError, describe, kind_of, with_article

COMMANDS = ("jvp", "vjp", "jacfwd", "jacrev")
JACOBIAN_COMMANDS = ("jacfwd", "jacrev")


@dataclass(frozen=True)
class JacobianInfo:
    """Where a Jacobian block comes from: its output leaf's and its input's shapes."""

    output_key: str
    output_shape: tuple[int, ...]
    input_index: int
    input_shape: tuple[int, ...]

    @property
    def matrix_shape(self) -> tuple[int, int]:
        return _numel(self.output_shape), _numel(self.input_shape)


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def bind(func: Callable[..., Any], kwargs: dict[str, Any]) -> Callable[..., Any]:
    """The function with its keyword arguments fixed (never differentiated, as in torch.func)."""
    return functools.partial(func, **kwargs) if kwargs else func


def call_function(func: Callable[..., Any], primals: Sequence[Any], has_aux: bool) -> tuple[Any, Any]:
    """Evaluate ``func(*primals)`` once and check what it returns; gives ``(output, aux)``."""
    result = guarded(lambda: func(*primals), "the function")
    if has_aux:
        if not isinstance(result, (tuple, list)) or len(result) != 2:
            raise FunctionError(
                f"--has-aux: the function must return (output, aux); it returned {kind_of(result)}"
            )
        output, aux = result
    else:
        output, aux = result, None
    check_output(output)
    return output, aux


def check_output(output: Any) -> None:
    """Outputs must be floating tensors, possibly in tuples, lists and dicts."""
    import torch

    found = trees.leaves(output)
    if not found:
        raise FunctionError("the function returned an empty container; it must return tensors")
    for key, leaf in found:
        name = trees.join("output", key)
        if not isinstance(leaf, torch.Tensor):
            hint = " (wrap numbers with torch.as_tensor)" if isinstance(leaf, (int, float)) else ""
            raise FunctionError(
                f"{name} is {kind_of(leaf)}; the function must return tensors, or a tuple, list "
                f"or dict of them{hint}"
            )
        if not (leaf.is_floating_point() or leaf.is_complex()):
            raise FunctionError(
                f"{name} is {with_article(str(leaf.dtype).replace('torch.', ''))} tensor; derivatives need "
                "a floating output (is there a .round(), argmax or comparison at the end?)"
            )


def normalize_argnums(argnums: int | Sequence[int], n_primals: int) -> int | tuple[int, ...]:
    """Check argnums against the number of primals; negative indices count from the end."""
    many = not isinstance(argnums, int)
    items = tuple(argnums) if many else (argnums,)
    if many and not items:
        raise InputError("--argnums is empty; give an index such as 0 or 0,2")
    out = []
    for a in items:
        if not -n_primals <= a < n_primals:
            raise InputError(
                f"--argnums {a} is out of range: there are {n_primals} primal(s), indices 0..{n_primals - 1}"
            )
        out.append(a % n_primals)
    if len(set(out)) != len(out):
        raise InputError(f"--argnums {','.join(map(str, items))} repeats an index")
    return tuple(out) if many else out[0]


def compute(
    command: str,
    func: Callable[..., Any],
    primals: Sequence[Any],
    *,
    tangents: Sequence[Any] | None = None,
    cotangents: Any = None,
    argnums: int | tuple[int, ...] = 0,
    has_aux: bool = False,
    chunk_size: int | None = None,
    randomness: str = "error",
) -> dict[str, Any]:
    """Run one transform; returns ``{"output": ..., "jvp"|"vjp"|"jacobian": ..., "aux": ...}``."""
    import torch.func as tf

    primals = tuple(primals)
    if command == "jvp":
        if tangents is None:
            tangents = tuple(_ones(p) for p in primals)
        got = guarded(lambda: tf.jvp(func, primals, tuple(tangents), has_aux=has_aux), "jvp")
        tree = {"output": got[0], "jvp": got[1]}
    elif command == "vjp":

        def run_vjp():
            out = tf.vjp(func, *primals, has_aux=has_aux)
            cot = cotangents if cotangents is not None else _ones(out[0])
            return (out[0], out[1](cot), *out[2:])

        got = guarded(run_vjp, "vjp")
        tree = {"output": got[0], "vjp": tuple(got[1])}
    elif command == "jacfwd":
        transform = tf.jacfwd(func, argnums=argnums, has_aux=has_aux, randomness=randomness)
        got = guarded(lambda: transform(*primals), "jacfwd")
        tree = {"jacobian": got[0] if has_aux else got}
    elif command == "jacrev":
        transform = tf.jacrev(func, argnums=argnums, has_aux=has_aux, chunk_size=chunk_size)
        got = guarded(lambda: transform(*primals), "jacrev")
        tree = {"jacobian": got[0] if has_aux else got}
    else:
        raise ValueError(f"unknown command {command!r}; expected one of {COMMANDS}")
    if has_aux:
        tree["aux"] = got[-1]
    return tree


def layout(
    command: str,
    output: Any,
    primals: Sequence[Any],
    argnums: int | tuple[int, ...],
    aux: Any,
    has_aux: bool,
) -> list[tuple[str, JacobianInfo | None]]:
    """The result keys ``compute`` will give, in order, known before it runs (for --select and -o)."""
    out_leaves = trees.leaves(output)
    if command in JACOBIAN_COMMANDS:
        many = not isinstance(argnums, int)
        args = argnums if many else (argnums,)
        keys = []
        for out_key, leaf in out_leaves:
            base = trees.join("jacobian", out_key)
            # torch.func puts the argnums position innermost, numbered by position in argnums
            for position, a in enumerate(args):
                info = JacobianInfo(
                    trees.join("output", out_key), tuple(leaf.shape), a, tuple(primals[a].shape)
                )
                keys.append((trees.join(base, str(position)) if many else base, info))
    else:
        keys = [(trees.join("output", k), None) for k, _ in out_leaves]
        if command == "jvp":
            keys += [(trees.join("jvp", k), None) for k, _ in out_leaves]
        else:
            keys += [(f"vjp.{i}", None) for i in range(len(primals))]
    if has_aux:
        keys += [(k, None) for k, _ in trees.leaves(aux, "aux")]
    return keys


def strict_check(func: Callable[..., Any], primals: Sequence[Any], wrt: Sequence[int], has_aux: bool) -> None:
    """--strict: an output that does not depend on a differentiated input is an error.

    Dependence is read off the autograd graph (as torch.autograd.functional's strict mode does):
    ``torch.autograd.grad`` gives None for an input no path reaches.
    """
    import torch

    with torch.enable_grad():
        inputs = [p.detach().requires_grad_(i in wrt) for i, p in enumerate(primals)]
        result = guarded(lambda: func(*inputs), "the function")
        output = result[0] if has_aux else result
        chosen = [inputs[i] for i in wrt]
        for key, leaf in trees.leaves(output):
            name = trees.join("output", key)
            if not leaf.requires_grad:
                grads = [None] * len(chosen)
            else:
                grads = guarded(
                    lambda leaf=leaf: torch.autograd.grad(
                        leaf, chosen, torch.ones_like(leaf), retain_graph=True, allow_unused=True
                    ),
                    "the reverse pass of --strict",
                )
            for i, g in zip(wrt, grads):
                if g is None:
                    raise FunctionError(
                        f"--strict: {name} does not depend on primal {i} (no autograd path: "
                        "torch.no_grad, .detach(), or an unused argument?); drop --strict to get zeros"
                    )


_FORWARD_MISSING = ("forward-mode ad", "forward ad", "jvp function for custom autograd.function")
_VMAP_TROUBLE = ("vmap", "batched tensor", "batchedtensor", "data-dependent control flow")


def guarded(fn: Callable[[], Any], what: str) -> Any:
    """Run user code; any exception becomes a one-line FunctionError with a hint where one helps."""
    try:
        return fn()
    except FunctionError:
        raise
    except SystemExit as exc:
        raise FunctionError(f"{what} called sys.exit({exc.code!r}); a function must return tensors") from exc
    except Exception as exc:
        text = str(exc).lower()
        hint = ""
        if any(s in text for s in _FORWARD_MISSING):
            hint = (
                "; an operator here has no forward-mode formula: use reverse mode "
                "(jac vjp, jac jacrev) instead"
            )
        elif "randomness" in text and what == "jacfwd":
            hint = "; the function draws random numbers: pass --randomness same or different"
        elif what in JACOBIAN_COMMANDS and any(s in text for s in _VMAP_TROUBLE):
            hint = (
                f"; {what} batches the function with vmap, which this function does not support "
                "(.item(), data-dependent control flow, in-place ops): use jvp or vjp per direction"
            )
        raise FunctionError(f"{what} raised {describe(exc)}{hint}") from exc


def _ones(tensor: Any) -> Any:
    import torch

    return torch.ones_like(tensor)
