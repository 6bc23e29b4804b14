"""``jac check``: do a function's derivatives agree with each other and with finite differences?

Checks, each PASS, FAIL or SKIPPED (with the reason; never counted as a pass):

- forward vs reverse: the Jacobian by jacfwd against jacrev;
- adjoint: ⟨u, J·v⟩ by forward mode against ⟨Jᵀ·u, v⟩ by reverse mode, for random u, v;
- finite differences, forward and reverse: J·v by each mode against the central difference
  (f(x+εv) − f(x−εv)) / 2ε, for several random v; with ``full``, the whole Jacobian column by
  column against the reverse-mode (and forward-mode) Jacobian.

Then the rows of :mod:`jaccli.checking.more`: the Taylor remainder, batched rules (vmap against a
loop), second derivatives (``order=2``) and repeatability. Forward and reverse mode each run by
the first engine that can (:mod:`jaccli.checking.modes`); a row that none can run is SKIPPED, and a
report with no row run is no pass (:func:`jaccli.checking.plan.require_a_check`).

An entry passes when |a − b| <= atol + rtol·|b| (b: the reference), as in torch.allclose; the
defaults are torch.autograd.gradcheck's (eps 1e-6, atol 1e-5, rtol 1e-3) for float64.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from jaccli import trees

DEFAULTS = {"eps": 1e-6, "atol": 1e-5, "rtol": 1e-3}  # torch.autograd.gradcheck's
LOW_PRECISION = {  # gradcheck's assume float64; these suit fewer digits
    "float32": {"eps": 1e-3, "atol": 1e-3, "rtol": 1e-2},
    # a step far above the unit roundoff (float16 ~1e-3, bfloat16 ~8e-3), or differences are noise
    "float16": {"eps": 5e-2, "atol": 5e-2, "rtol": 1e-1},
    "bfloat16": {"eps": 1e-1, "atol": 1e-1, "rtol": 2e-1},
}


FWD_VS_REV = "forward vs reverse"
ADJOINT = "adjoint <u,Jv> = <J^T u,v>"
FD_FORWARD = "fd: forward J.v"
FD_REVERSE = "fd: reverse J.v"
FULL_REVERSE = "fd: full Jacobian, reverse"
FULL_FORWARD = "fd: full Jacobian, forward"
TAYLOR = "taylor remainder O(h^2)"
BATCHED_F = "batched: vmap f vs loop"
BATCHED_JVP = "batched: vmap jvp vs loop"
BATCHED_VJP = "batched: vmap vjp vs loop"
SECOND_FOR_ROR = "order 2: fwd-over-rev vs rev-over-rev"
SECOND_FD_ROR = "order 2: fd of gradient, rev-over-rev"
SECOND_FD_FOR = "order 2: fd of gradient, fwd-over-rev"
SECOND_SYMMETRY = "order 2: Hessian symmetry"
REPEATABLE = "repeatable: f(x) twice"
_MODE = {"fwd": "forward", "rev": "reverse"}


def tolerances(dtype: str, **overrides: float | None) -> dict[str, float]:
    chosen = dict(LOW_PRECISION.get(dtype, DEFAULTS))
    chosen.update({k: v for k, v in overrides.items() if v is not None})
    return chosen


@dataclass
class Row:
    name: str
    verdict: str  # PASS, FAIL, SKIPPED
    max_abs: float | None = None
    max_rel: float | None = None
    detail: str = ""  # the worst entry, or why it was skipped
    counts: bool = True  # a derivative check (the repeatability row is not one)
    slope: float | None = None  # the Taylor row: the observed log-log slope of the remainder

    def as_dict(self) -> dict[str, Any]:
        doc = {
            "check": self.name,
            "verdict": self.verdict,
            "max_abs_error": self.max_abs,
            "max_rel_error": self.max_rel,
            "detail": self.detail,
        }
        if self.name == TAYLOR:
            doc["slope"] = self.slope
        return doc


@dataclass
class Report:
    rows: list[Row]
    tolerance: dict[str, float]
    dtype: str
    notes: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return self.ran and all(r.verdict != "FAIL" for r in self.rows)

    @property
    def ran(self) -> bool:
        """At least one derivative check ran (PASS or FAIL): a report of SKIPPED rows is no pass."""
        return any(r.counts and r.verdict != "SKIPPED" for r in self.rows)

    def as_dict(self) -> dict[str, Any]:
        return {
            "verdict": "PASS" if self.passed else "FAIL",
            "dtype": self.dtype,
            **self.tolerance,
            "checks": [r.as_dict() for r in self.rows],
        }


class _Labels:
    """Names for flat output and input indices: ``output.a[1, 2]``, ``primal 0[3]``."""

    def __init__(self, output: Any, primals: Sequence[Any], names: Sequence[str] | None):
        self.outputs = [(trees.join("output", k), tuple(t.shape)) for k, t in trees.leaves(output)]
        self.inputs = [
            (f"parameter {names[i]}" if names else f"primal {i}", tuple(p.shape))
            for i, p in enumerate(primals)
        ]

    @staticmethod
    def _locate(parts: list[tuple[str, tuple[int, ...]]], flat: int) -> str:
        import numpy as np

        for name, shape in parts:
            size = int(np.prod(shape)) if shape else 1
            if flat < size:
                index = np.unravel_index(flat, shape) if shape else ()
                return f"{name}[{', '.join(str(int(i)) for i in index)}]" if shape else name
            flat -= size
        return f"#{flat}"

    def output(self, flat: int) -> str:
        return self._locate(self.outputs, flat)

    def input(self, flat: int) -> str:
        return self._locate(self.inputs, flat)


def run_checks(
    fn: Callable[..., Any],
    primals: Sequence[Any],
    *,
    has_aux: bool,
    tolerance: dict[str, float],
    rng: Any,
    directions: int = 3,
    full: bool = False,
    names: Sequence[str] | None = None,
    order: int = 1,
    randomness: str = "error",
    whole: str | None = None,
    nondet_tol: float = 0.0,
) -> list[Row]:
    """Every check of the module docstring, on ``fn`` at ``primals``.

    ``whole``: why the whole Jacobians are not computed (too large, --wrt params), or None;
    ``randomness``: vmap's, "same" for a function drawing random numbers (under a seeded stream).
    """
    import torch

    from jaccli.checking import more as check_more
    from jaccli.checking.modes import Modes, Unavailable, flat_out

    def f(*args: Any) -> Any:
        result = fn(*args)
        return result[0] if has_aux else result

    primals = tuple(primals)
    output = f(*primals)
    labels = _Labels(output, primals, names)
    modes = Modes(f, primals, output, randomness)

    def random_like(t: Any) -> Any:
        return torch.as_tensor(rng.standard_normal(tuple(t.shape)), dtype=t.dtype, device=t.device)

    jacobians: dict[str, Any] = {}
    failures: dict[str, str] = {}
    if whole is None:
        for mode in ("fwd", "rev"):
            try:
                jacobians[mode] = modes.jacobian(mode)
            except Unavailable as exc:
                failures[mode] = str(exc)

    rows: list[Row] = []
    if whole is not None:
        rows.append(Row(FWD_VS_REV, "SKIPPED", detail=whole))
    elif "fwd" in jacobians and "rev" in jacobians:
        rows.append(
            _compare(
                FWD_VS_REV,
                jacobians["fwd"],
                jacobians["rev"],
                tolerance,
                labels,
                sides=("forward", "reverse"),
            )
        )
    else:
        mode = "fwd" if "fwd" in failures else "rev"
        rows.append(Row(FWD_VS_REV, "SKIPPED", detail=f"{_MODE[mode]} mode failed: {failures[mode]}"))

    vs = [tuple(random_like(p) for p in primals) for _ in range(directions)]
    us = [trees.map_leaves(random_like, output) for _ in range(directions)]
    forward_jvps, forward_failure = [], None
    try:
        forward_jvps = [modes.jvp(v) for v in vs]
    except Unavailable as exc:
        forward_failure = str(exc)
    reverse_vjps, reverse_failure = [], None
    try:
        reverse_vjps = [modes.vjp(u) for u in us]
    except Unavailable as exc:
        reverse_failure = str(exc)

    if forward_failure or reverse_failure:
        why = (
            f"forward mode failed: {forward_failure}"
            if forward_failure
            else f"reverse mode failed: {reverse_failure}"
        )
        rows.append(Row(ADJOINT, "SKIPPED", detail=why))
    else:
        left = torch.stack([flat_out(u) @ jv for u, jv in zip(us, forward_jvps)])
        right = torch.stack([ju @ _flat(v) for ju, v in zip(reverse_vjps, vs)])
        rows.append(_compare(ADJOINT, left, right, tolerance, None, "random pair", ("<u,Jv>", "<J^T u,v>")))

    eps = tolerance["eps"]
    differences = [_central(f, primals, v, eps, flat_out) for v in vs]
    fd = torch.stack(differences)  # directions x outputs
    if forward_failure:
        rows.append(Row(FD_FORWARD, "SKIPPED", detail=f"forward mode failed: {forward_failure}"))
    else:
        rows.append(
            _compare(
                FD_FORWARD, torch.stack(forward_jvps), fd, tolerance, labels, "direction", ("forward", "fd")
            )
        )
    if "rev" in jacobians:
        reverse_jv = torch.stack([jacobians["rev"] @ _flat(v) for v in vs])
        rows.append(_compare(FD_REVERSE, reverse_jv, fd, tolerance, labels, "direction", ("reverse", "fd")))
    elif reverse_failure is None:  # no whole Jacobian: <J^T u, v> against <u, fd(v)>, every pair
        got = torch.stack([ju @ _flat(v) for ju in reverse_vjps for v in vs])
        want = torch.stack([flat_out(u) @ d for u in us for d in differences])
        row = _compare(FD_REVERSE, got, want, tolerance, None, "pair (u, v)", ("<J^T u,v>", "<u,fd>"))
        rows.append(row)
    else:
        rows.append(Row(FD_REVERSE, "SKIPPED", detail=f"reverse mode failed: {reverse_failure}"))

    if full:
        columns = _fd_jacobian(f, primals, eps, flat_out)
        for mode, title in (
            ("rev", FULL_REVERSE),
            ("fwd", FULL_FORWARD),
        ):
            if mode in jacobians:
                rows.append(
                    _compare(title, jacobians[mode], columns, tolerance, labels, sides=(_MODE[mode], "fd"))
                )
            else:
                why = failures.get(mode) or whole or "not computed"
                rows.append(Row(title, "SKIPPED", detail=f"{_MODE[mode]} mode failed: {why}"))

    rows.append(check_more.taylor_row(f, primals, output, modes, random_like, us[0], tolerance))
    rows.extend(check_more.batched_rows(f, primals, output, tolerance, rng, randomness, random_like))
    if order >= 2:
        rows.extend(check_more.second_order_rows(f, primals, output, tolerance, vs, us[0], random_like))
    rows.append(check_more.repeat_row(f, primals, output, nondet_tol))
    return rows


def _flat(tensors: Sequence[Any]) -> Any:
    import torch

    return torch.cat([t.reshape(-1) for t in tensors])


def _central(f: Callable[..., Any], primals: Sequence[Any], v: Sequence[Any], eps: float, flat_out) -> Any:
    import torch

    with torch.no_grad():
        ahead = flat_out(f(*(p + eps * d for p, d in zip(primals, v))))
        behind = flat_out(f(*(p - eps * d for p, d in zip(primals, v))))
    return (ahead - behind) / (2 * eps)


def _fd_jacobian(f: Callable[..., Any], primals: Sequence[Any], eps: float, flat_out) -> Any:
    """The whole Jacobian by central differences, one input element (column) at a time."""
    import torch

    from jaccli.checking.modes import basis
    from jaccli.report import progress

    columns = []
    with progress.bar("check --full: finite differences", sum(p.numel() for p in primals)) as shown:
        for direction in basis(primals):
            columns.append(_central(f, primals, direction, eps, flat_out))
            shown.advance()
    return torch.stack(columns, dim=1)


def _compare(
    name: str,
    got: Any,
    want: Any,
    tol: dict[str, float],
    labels: _Labels | None,
    row_name: str = "",
    sides: tuple[str, str] = ("got", "expected"),
) -> Row:
    """Elementwise |got - want| <= atol + rtol |want|; the worst entry named on failure."""
    import torch

    got, want = got.detach().double(), want.detach().double()
    error = (got - want).abs()
    bound = tol["atol"] + tol["rtol"] * want.abs()
    max_abs = float(error.max()) if error.numel() else 0.0
    significant = want.abs() > tol["atol"]  # relative error means little against a zero
    max_rel = float((error[significant] / want.abs()[significant]).max()) if bool(significant.any()) else 0.0
    if not bool((error > bound).any()) and bool(torch.isfinite(got).all()) == bool(
        torch.isfinite(want).all()
    ):
        return Row(name, "PASS", max_abs, max_rel)
    excess = torch.where(torch.isfinite(error), error - bound, torch.full_like(error, float("inf")))
    flat = int(excess.reshape(-1).argmax())
    index = tuple(int(i) for i in torch.unravel_index(torch.tensor(flat), error.shape)) if error.dim() else ()
    where = _describe_entry(index, labels, row_name)
    a, b = float(got.reshape(-1)[flat]), float(want.reshape(-1)[flat])
    detail = f"worst at {where}: {sides[0]} {a:.6g} vs {sides[1]} {b:.6g}"
    return Row(name, "FAIL", max_abs, max_rel, detail)


def _describe_entry(index: tuple[int, ...], labels: _Labels | None, row_name: str) -> str:
    if row_name and labels is not None:  # (direction, output element)
        return f"{row_name} {index[0]}, {labels.output(index[1])}"
    if row_name:
        return f"{row_name} {index[0]}"
    if labels is not None and len(index) == 2:
        return f"d {labels.output(index[0])} / d {labels.input(index[1])}"
    return str(index)
