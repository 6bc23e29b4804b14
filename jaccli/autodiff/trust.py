"""Numbers jac can stand behind: what the derivative commands check on the way.

- The first call profiles the function (:mod:`jaccli.autodiff.calls`): one that changes its inputs, a
  module's buffers, or draws random numbers is wrapped so that every later call sees the inputs
  the user gave and the same ``--seed``-ed random stream (:func:`first_call`).
- A route whose derivative holds NaN or infinity where the function's output is finite is not
  trusted at once: the router tries the next route (:func:`non_finite`).
- A derivative exactly zero everywhere earns a note: the function may have left the graph
  (:func:`zero_note`).
- ZeroTensors (torch's stand-in for a derivative known to be zero) become real zeros on the way
  to the host (:func:`materialize`).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

from jaccli import trees

DERIVATIVE_KEYS = ("jvp", "vjp", "jacobian", "hessian", "hvp", "grad")


def state_of(module: Any, closed_over: Sequence[Any] = ()) -> list:
    """The tensors a function reads without taking them as arguments: a module's buffers, and
    the inputs of a function over a module's parameters (``--wrt params``)."""
    found = list(closed_over)
    if module is not None and hasattr(module, "buffers"):
        found += list(module.buffers())
    return found


def first_call(
    fn: Callable[..., Any],
    call: Callable[[Callable[..., Any]], Any],
    seed: int | None,
    state: Sequence[Any] = (),
) -> tuple[Any, Callable[..., Any], Any]:
    """``(result, disciplined fn, profile)``: ``call(g)`` evaluates a stand-in ``g`` of ``fn``
    once (it may vmap it), as every later call of the returned function will see it."""
    from jaccli.autodiff import calls

    found: dict[str, Any] = {}

    def profiled(*args: Any) -> Any:
        out, how = calls.profile(fn, args, seed, state)
        found["how"] = how if "how" not in found else _union(found["how"], how)
        return out

    result = call(profiled)
    how = found.get("how") or calls.Profile(False, False)
    return result, calls.disciplined(fn, how, seed, state), how


def _union(a: Any, b: Any) -> Any:
    from jaccli.autodiff import calls

    return calls.Profile(a.mutates or b.mutates, a.random or b.random, a.changes_state or b.changes_state)


def profile_note(how: Any) -> str | None:
    """What the first call found, for the notes."""
    parts = []
    if how.mutates or how.changes_state:
        parts.append("changes its inputs or state in place: every call got a fresh copy")
    if how.random:
        parts.append("draws random numbers: every evaluation ran on the same stream, seeded by --seed")
    return "the function " + "; ".join(parts) if parts else None


def _derivatives(tree: Any) -> list:
    import torch

    return [
        t
        for k, t in trees.leaves(tree)
        if k.split(".")[0] in DERIVATIVE_KEYS and isinstance(t, torch.Tensor) and t.numel()
    ]


def finite(tree: Any) -> bool:
    """Whether every tensor leaf of ``tree`` is free of NaN and infinity."""
    import torch

    for _, t in trees.leaves(tree):
        if isinstance(t, torch.Tensor) and t.numel() and (t.is_floating_point() or t.is_complex()):
            if not _is_zero_tensor(t) and not _all_finite(t):
                return False
    return True


def _all_finite(t: Any) -> bool:
    """One reduction, no tensor of flags the size of ``t`` (a Jacobian may be most of memory):
    the sum is finite when every element is, and a non-finite sum is confirmed element-wise
    (it may be an overflow)."""
    import torch

    return bool(torch.isfinite(t.sum())) or bool(torch.isfinite(t).all())


def non_finite(tree: Any) -> bool:
    """Whether a derivative in a result tree holds NaN or infinity."""

    for t in _derivatives(tree):
        if (t.is_floating_point() or t.is_complex()) and not _is_zero_tensor(t):
            if not _all_finite(t):
                return True
    return False


def _is_zero_tensor(t: Any) -> bool:
    return bool(getattr(t, "_is_zerotensor", lambda: False)())


def materialize(t: Any) -> Any:
    """A ZeroTensor as real zeros of its shape and dtype (numpy cannot read a ZeroTensor)."""
    import torch

    if isinstance(t, torch.Tensor) and _is_zero_tensor(t):
        return torch.zeros(t.shape, dtype=t.dtype, device=t.device)
    return t


def left_graph(fn: Callable[..., Any], primals: Sequence[Any], has_aux: bool) -> bool:
    """Whether no output of ``fn`` is on the autograd graph of its inputs (one more call: made
    only when every derivative came out zero, to tell a zero derivative from a cut graph)."""
    import torch

    try:
        with torch.enable_grad():
            inputs = [p.detach().requires_grad_(p.is_floating_point()) for p in primals]
            result = fn(*inputs)
            output = result[0] if has_aux else result
        return not any(getattr(t, "requires_grad", False) for _, t in trees.leaves(output))
    except Exception:
        return False


def zero_note(results: dict[str, Any]) -> str | None:
    """A note when every Jacobian or Hessian result is exactly zero everywhere (and there is one).
    Not for jvp, vjp or hvp: a zero tangent or cotangent gives zeros rightly."""
    import numpy as np

    arrays = [
        a
        for k, a in results.items()
        if k.split(".")[0] in ("jacobian", "hessian") and isinstance(a, np.ndarray) and a.size
    ]
    if not arrays or any(np.any(a != 0) for a in arrays):
        return None
    return (
        "every derivative is exactly zero and the output is off the autograd graph: the function "
        "may have left it (.detach(), .item(), numpy, torch.no_grad); `jac check` or --strict tells"
    )
