"""The four transforms over torch.func, and the names of what they return.

``compute`` is the library entry for tensors already in hand::

    >>> import torch
    >>> from jaccli.autodiff.transforms import compute
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

COMMANDS = ("jvp", "vjp", "jacfwd", "jacrev", "jacobian", "hessian", "hvp")
JACOBIAN_COMMANDS = ("jacfwd", "jacrev")


@dataclass(frozen=True)
class JacobianInfo:
    """Where a Jacobian block comes from: its output leaf's and its input's shapes."""

    output_key: str
    output_shape: tuple[int, ...]
    input_index: int
    input_shape: tuple[int, ...]
    input_label: str = ""  # how messages name the input: "primal 0", "parameter 0.weight"

    @property
    def input_name(self) -> str:
        return self.input_label or f"primal {self.input_index}"

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
        if leaf.layout != torch.strided:
            raise FunctionError(
                f"{name} is a {leaf.layout} tensor; jac differentiates dense outputs (.to_dense())"
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


def compute(command: str, func: Callable[..., Any], primals: Sequence[Any], **options: Any) -> dict[str, Any]:
    """Run one transform; returns ``{"output": ..., "jvp"|"vjp"|"jacobian"|...: ..., "aux": ...}``.

    Takes :func:`compute_raw`'s arguments; exceptions become FunctionError (exit 3), and
    :mod:`jaccli.autodiff.routing` adds fallbacks on top.
    """
    return guarded(lambda: compute_raw(command, func, primals, **options), command)


def compute_raw(
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
    engine: str = "func",
) -> dict[str, Any]:
    """One transform, exceptions left as torch raised them (so fallbacks can read them).

    ``command`` is one of jvp, vjp, jacfwd, jacrev, hessian, hessian-rev, hvp; ``engine`` is
    ``func`` (torch.func) or ``autograd`` (torch.autograd, see :mod:`jaccli.autodiff.engines`).
    """
    primals = tuple(primals)
    if tangents is None and command in ("jvp", "jvp-fwd", "hvp"):
        tangents = tuple(_ones(p) for p in primals)
    if cotangents is None and command == "vjp":
        cotangents = _ones(func(*primals)[0] if has_aux else func(*primals))
    if command in ("jacfwd", "jacrev", "hessian", "hessian-rev") and any(
        primals[a].numel() == 0 for a in (argnums if isinstance(argnums, tuple) else (argnums,))
    ):
        engine = "autograd"  # vmap cannot batch over zero elements; the blocks are empty anyway
    if engine == "autograd":
        return _autograd(command, func, primals, tangents, cotangents, argnums, has_aux)
    if engine != "func":
        raise ValueError(f"unknown engine {engine!r}; expected func or autograd")
    import torch.func as tf

    if command == "jvp":
        got = tf.jvp(func, primals, tuple(tangents), has_aux=has_aux)
        tree = {"output": got[0], "jvp": settle_dtypes(got[1], got[0], primals)}
    elif command == "vjp":
        out = tf.vjp(func, *primals, has_aux=has_aux)
        got = (out[0], out[1](cotangents), *out[2:])
        tree = {"output": got[0], "vjp": tuple(got[1])}
    elif command in ("jacfwd", "jacrev"):
        if command == "jacfwd" and all(p.numel() for p in primals):
            # the output rides along as aux: its dtypes settle the result's (torch's jacfwd with
            # aux fails on zero-size inputs, whose Jacobians have nothing to settle anyway)
            transform = tf.jacfwd(
                _with_value(func, has_aux), argnums=argnums, has_aux=True, randomness=randomness
            )
            jacobian, carried = transform(*primals)
            output, aux = carried if has_aux else (carried, None)
            got = (settle_dtypes(jacobian, output, primals), aux)
        elif command == "jacfwd":
            got = tf.jacfwd(func, argnums=argnums, has_aux=has_aux, randomness=randomness)(*primals)
            got = got if has_aux else (got, None)
        else:
            got = tf.jacrev(func, argnums=argnums, has_aux=has_aux, chunk_size=chunk_size)(*primals)
            got = got if has_aux else (got, None)
        tree = {"jacobian": got[0]}
    elif command in ("hessian", "hessian-rev"):
        inner = tf.jacrev(func, argnums=argnums, has_aux=has_aux)
        if command == "hessian":  # forward over reverse, as torch.func.hessian
            outer = tf.jacfwd(inner, argnums=argnums, has_aux=has_aux, randomness=randomness)
        else:  # reverse over reverse: for operators without forward-mode formulas
            outer = tf.jacrev(inner, argnums=argnums, has_aux=has_aux, chunk_size=chunk_size)
        got = outer(*primals)
        hessian = got[0] if has_aux else got
        if command == "hessian":  # forward over reverse may promote: settle on the output's dtype
            value = func(*primals)
            hessian = settle_dtypes(hessian, value[0] if has_aux else value, primals)
        tree = {"hessian": hessian}
    elif command == "hvp":  # forward over reverse: jvp of the gradient
        every = 0 if len(primals) == 1 else tuple(range(len(primals)))
        gradient = tf.grad_and_value(func, argnums=every, has_aux=has_aux)
        grads, products, carried = tf.jvp(gradient, primals, tuple(tangents), has_aux=True)
        value, aux = carried if has_aux else (carried, None)
        got = (value, grads, products, aux)
        tree = {"output": value, "grad": grads, "hvp": settle_dtypes(products, value, primals)}
    else:
        raise ValueError(f"unknown command {command!r}")
    if has_aux:
        tree["aux"] = got[-1]
    return tree


def _with_value(func: Callable[..., Any], has_aux: bool) -> Callable[..., Any]:
    """``func`` returning ``(output, (output, aux))`` (or ``(output, output)`` without aux):
    jacfwd's aux channel, which takes tensors only, carries the value."""

    def wrapped(*args: Any) -> Any:
        result = func(*args)
        return (result[0], result) if has_aux else (result, result)

    return wrapped


def settle_dtypes(derivative: Any, output: Any, primals: Sequence[Any]) -> Any:
    """Narrow forward-mode results wider than the promotion of their output's and primals' dtypes.

    Forward mode gives float64 where float32 is due when a 0-d tensor meets a Python number
    (pytorch#90065); reverse mode does not, and the two must agree. ``derivative`` follows
    ``output``'s structure; below each output leaf it may hold one block per argnum.
    """
    import torch

    floating = [p.dtype for p in primals if p.is_floating_point()]
    if not floating:
        return derivative
    base = floating[0]
    for dtype in floating[1:]:
        base = torch.promote_types(base, dtype)

    def walk(part: Any, out: Any) -> Any:
        if isinstance(out, dict):
            return {k: walk(part[k], v) for k, v in out.items()}
        if isinstance(out, (tuple, list)):
            mapped = [walk(d, o) for d, o in zip(part, out)]
            return type(part)(*mapped) if hasattr(part, "_fields") else type(part)(mapped)
        want = torch.promote_types(out.dtype, base) if out.is_floating_point() else base

        def cast(leaf: Any) -> Any:  # narrow only what forward mode widened; keep the rest as is
            if isinstance(leaf, torch.Tensor) and leaf.is_floating_point() and leaf.dtype != want:
                if torch.promote_types(leaf.dtype, want) == leaf.dtype:
                    return leaf.to(want)
            return leaf

        return trees.map_leaves(cast, part)

    return walk(derivative, output)


def _autograd(command, func, primals, tangents, cotangents, argnums, has_aux) -> dict[str, Any]:
    from jaccli.autodiff import engines

    def split(*args):
        result = func(*args)
        return result if has_aux else (result, None)

    if command == "jvp":
        return engines.jvp(split, primals, tangents, has_aux)
    if command == "jvp-fwd":
        tree = engines.jvp_forward(split, primals, tangents, has_aux)
        tree["jvp"] = settle_dtypes(tree["jvp"], tree["output"], primals)
        return tree
    if command == "vjp":
        return engines.vjp(split, primals, cotangents, has_aux)
    if command in ("jacfwd", "jacrev"):
        return engines.jacobian(split, primals, argnums, has_aux)
    if command == "jacrev-batched":
        return engines.jacobian_batched(split, primals, argnums, has_aux)
    if command in ("hessian", "hessian-rev"):
        return engines.hessian(split, primals, argnums, has_aux)
    if command == "hvp":
        return engines.hvp(split, primals, tangents, has_aux)
    raise ValueError(f"unknown command {command!r}")


# Where `jac jacobian --mode auto` times both modes instead of trusting sizes: measured on a
# 2-core CPU, jacfwd carries ~2 ms of fixed cost against jacrev's ~0.5 ms, so below a few
# thousand elements a side the winner depends on the function (benchmarks/RESULTS.md).
TRIAL_MAX_SIDE = 4096
TRIAL_MAX_ENTRIES = 1 << 20
TRIAL_MAX_CALL_S = 0.01


def choose_mode(n_inputs: int, n_outputs: int) -> tuple[str, str]:
    """Forward or reverse mode for a full Jacobian by pass counts, and why.

    Forward mode costs one pass per input element, reverse one per output element.
    """
    if n_inputs < n_outputs:
        return "fwd", f"{n_inputs} input elements < {n_outputs} output elements: forward needs fewer passes"
    return "rev", f"{n_outputs} output elements <= {n_inputs} input elements: reverse needs fewer passes"


def worth_a_trial(n_inputs: int, n_outputs: int, call_time: float) -> bool:
    """Small problems, where fixed costs decide, are cheaper to measure than to predict."""
    return (
        max(n_inputs, n_outputs) <= TRIAL_MAX_SIDE
        and n_inputs * n_outputs <= TRIAL_MAX_ENTRIES
        and call_time <= TRIAL_MAX_CALL_S
    )


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
    if command in ("jacfwd", "jacrev", "jacobian"):
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
    elif command in ("hessian", "hessian-rev"):
        many = not isinstance(argnums, int)
        args = argnums if many else (argnums,)
        keys = [
            (f"hessian.{i}.{j}" if many else "hessian", None)
            for i in range(len(args))
            for j in range(len(args))
        ]
    elif command == "hvp":
        parts = [""] if len(primals) == 1 else [str(i) for i in range(len(primals))]
        keys = [("output", None)] + [(trees.join(name, p), None) for name in ("grad", "hvp") for p in parts]
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


_FORWARD_MISSING = (
    "forward ad",
    "forward-mode ad",
    "jvp function for custom autograd.function",
)
# torch's vmap errors start "vmap: ..."; a custom autograd.Function without a vmap rule says so
_VMAP = ("vmap:", "does not have vmap support", "batching rule")
# an old-style autograd.Function; a function changing a tensor it captures (a module's buffer)
_NOT_TRANSFORMABLE = ("must override the setup_context", "mutate a captured tensor")
# torch.func's wrapped tensors have no storage for numpy; autograd refuses a tensor that requires grad
_NUMPY = ("cannot access data pointer", "can't call numpy() on tensor that requires grad")
# PyTorch failing inside its own machinery on one route (functorch writing into a ZeroTensor)
_TORCH_INTERNAL = ("zerotensors are immutable",)
_DOUBLE_BACKWARD = ("derivative for", "double backward", "backward of")


def failure_reason(exc: BaseException) -> str | None:
    """Why another route might succeed where this one failed: 'forward' (no forward-mode
    formula), 'vmap' (vmap cannot batch the function), 'functorch' (torch.func cannot transform
    it at all), 'missing' (no formula for this order), 'internal' (PyTorch failing in its own
    machinery on this route), or None: the function's own error."""
    text = str(exc).lower()
    if "randomness" in text:
        return None  # a choice for the user (--randomness), not for a fallback
    if any(marker in text for marker in _FORWARD_MISSING):
        return "forward"
    if any(marker in text for marker in _VMAP):
        return "vmap"
    if any(marker in text for marker in _NOT_TRANSFORMABLE):
        return "functorch"
    if any(marker in text for marker in _TORCH_INTERNAL):
        return "internal"
    if isinstance(exc, NotImplementedError) or (
        "not implemented" in text and any(marker in text for marker in _DOUBLE_BACKWARD)
    ):
        return "missing"
    return None


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
        why = failure_reason(exc)
        hint = ""
        if "randomness" in text and what in ("jacfwd", "jacobian", "hessian"):
            hint = (
                "; the function draws random numbers, which --randomness error refuses under vmap: "
                "use --randomness same (the default) or different"
            )
        elif why == "forward":
            hint = (
                "; an operator here has no forward-mode formula: use --engine auto (the default) "
                "to fall back, or reverse mode (jac vjp, jac jacrev)"
            )
        elif why == "vmap":
            hint = (
                "; vmap cannot batch this function (.item(), data-dependent control flow, in-place "
                "ops, an autograd.Function without a vmap rule): use --engine auto (the default) to "
                "fall back to a loop"
            )
        elif why == "functorch":
            hint = "; torch.func cannot transform this function: use --engine auto (the default) or autograd"
        elif any(marker in text for marker in _NUMPY):
            hint = (
                "; the function leaves torch through numpy (.numpy(), np.* on a tensor): derivatives "
                "cannot flow through numpy, keep the computation in torch"
            )
        raise FunctionError(f"{what} raised {describe(exc)}{hint}") from exc


def _ones(tensor: Any) -> Any:
    import torch

    return torch.ones_like(tensor)
