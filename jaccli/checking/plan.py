"""What ``jac check`` can afford, decided before any check runs, and what it must refuse.

- Zero-size inputs or outputs: nothing to check (exit 2, one line).
- Whole Jacobians (the forward vs reverse row, ``--full``) only when they are small, never over a
  module's parameters unless ``--full`` asks, and then only when the memory plan allows;
  otherwise every check runs along random directions (J·v, Jᵀ·u, finite differences along v),
  which costs a few function evaluations whatever the size.
- A report in which no derivative check ran is no pass (exit 2, one line).
"""

from __future__ import annotations

from typing import Any, Sequence

from jaccli import trees
from jaccli.errors import InputError, human_size

AUTO_ENTRIES = 1 << 22  # whole Jacobians up to 4M entries (32 MiB each in float64) without --full


def whole_jacobians(request: Any, primals: Sequence[Any], output: Any) -> str | None:
    """None when the whole Jacobians are computed, else why not (the forward vs reverse row says it)."""
    from jaccli.scale import memory

    n_in = sum(p.numel() for p in primals)
    n_out = sum(t.numel() for _, t in trees.leaves(output))
    if n_out == 0:
        shapes = ", ".join(f"{trees.join('output', k)} {tuple(t.shape)}" for k, t in trees.leaves(output))
        raise InputError(
            f"jac check: the function's output has no elements ({shapes}): there is no derivative to "
            "check; give inputs for which it returns at least one element"
        )
    if n_in == 0:
        raise InputError(
            "jac check: the inputs have no elements: there is no derivative to check; give inputs "
            "with at least one element"
        )
    entries = n_in * n_out
    itemsize = primals[0].element_size()
    need = entries * itemsize * (3 if request.full else 2)  # forward, reverse (and fd) Jacobians
    if request.full:
        allowed = memory.allowed_bytes(request.max_memory)
        if need > allowed:
            where = "--max-memory" if request.max_memory is not None else "80% of the memory free now"
            raise InputError(
                f"jac check --full: the whole Jacobians ({n_out} outputs x {n_in} inputs) would take "
                f"{human_size(need)}, more than {where} ({human_size(allowed)}): drop --full (the checks "
                "then run along random directions), or raise --max-memory"
            )
        return None
    if request.wrt == "params":
        return (
            f"not computed under --wrt params ({n_out} outputs x {n_in} parameters, "
            f"{human_size(entries * itemsize)} each way): the adjoint and fd rows compare the modes "
            "along random directions; --full computes it"
        )
    if entries > AUTO_ENTRIES:
        return (
            f"not computed: the whole Jacobian has {n_out} x {n_in} entries "
            f"({human_size(entries * itemsize)}); "
            "the adjoint and fd rows compare the modes along random directions; --full computes it"
        )
    return None


def require_a_check(report: Any) -> None:
    """SPEC: a run in which no check ran is never PASS and never exit 0."""
    if report.ran:
        return
    reasons = sorted({r.detail for r in report.rows if r.counts and r.detail})
    why = reasons[0] if reasons else "every check was skipped"
    raise InputError(f"jac check: no check could run, so there is no verdict: {why}"[:2000])


def refuse_sparse(primals: Sequence[Any]) -> None:
    """Sparse tensors given through the library API: jac checks dense inputs only."""
    for i, p in enumerate(primals):
        layout = getattr(p, "layout", None)
        if layout is not None and str(layout) != "torch.strided":
            raise InputError(
                f"jac check: primal {i} is a {str(layout)[6:]} tensor; give a dense one (.to_dense())"
            )
