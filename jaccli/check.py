"""``jac check``: do a function's derivatives agree with each other and with finite differences?

Checks, each PASS, FAIL or SKIPPED (with the reason; never counted as a pass):

- forward vs reverse: the Jacobian by jacfwd against jacrev;
- adjoint: ⟨u, J·v⟩ by forward mode against ⟨Jᵀ·u, v⟩ by reverse mode, for random u, v;
- finite differences, forward and reverse: J·v by each mode against the central difference
  (f(x+εv) − f(x−εv)) / 2ε, for several random v; with ``full``, the whole Jacobian column by
  column against the reverse-mode (and forward-mode) Jacobian.

An entry passes when |a − b| <= atol + rtol·|b| (b: the reference), as in torch.allclose; the
defaults are torch.autograd.gradcheck's (eps 1e-6, atol 1e-5, rtol 1e-3) for float64.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence

from jaccli import trees
from jaccli.transforms import failure_reason

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

    def as_dict(self) -> dict[str, Any]:
        return {
            "check": self.name,
            "verdict": self.verdict,
            "max_abs_error": self.max_abs,
            "max_rel_error": self.max_rel,
            "detail": self.detail,
        }


@dataclass
class Report:
    rows: list[Row]
    tolerance: dict[str, float]
    dtype: str
    notes: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(r.verdict != "FAIL" for r in self.rows)

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
) -> list[Row]:
    """Every check of the module docstring, on ``fn`` at ``primals``."""
    import torch

    def f(*args: Any) -> Any:
        result = fn(*args)
        return result[0] if has_aux else result

    primals = tuple(primals)
    output = f(*primals)
    labels = _Labels(output, primals, names)

    def flat_out(tree: Any) -> Any:
        return torch.cat([t.reshape(-1) for _, t in trees.leaves(tree)])

    def random_like(t: Any) -> Any:
        return torch.as_tensor(rng.standard_normal(tuple(t.shape)), dtype=t.dtype, device=t.device)

    every = tuple(range(len(primals)))
    jacobians: dict[str, Any] = {}
    failures: dict[str, str] = {}
    for mode, transform in (("fwd", torch.func.jacfwd), ("rev", torch.func.jacrev)):
        try:
            try:
                jacobians[mode] = _matrix(transform(f, argnums=every)(*primals), output, len(primals))
            except Exception as exc:
                if failure_reason(exc) not in ("vmap", "forward"):
                    raise
                jacobians[mode] = _looped(
                    mode, f, primals, flat_out
                )  # e.g. an autograd.Function without vmap
        except Exception as exc:  # noqa: BLE001 - SKIPPED with torch's reason, or re-raised
            failures[mode] = _skip_reason(exc)

    rows: list[Row] = []
    if "fwd" in jacobians and "rev" in jacobians:
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
    for v in vs:
        try:
            forward_jvps.append(flat_out(torch.func.jvp(f, primals, v)[1]))
        except Exception as exc:  # noqa: BLE001
            forward_failure = _skip_reason(exc)
            break
    reverse_vjps, reverse_failure = [], None
    for u in us:
        try:
            _, pullback = torch.func.vjp(f, *primals)
            reverse_vjps.append(torch.cat([g.reshape(-1) for g in pullback(u)]))
        except Exception as exc:  # noqa: BLE001
            reverse_failure = _skip_reason(exc)
            break

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
    else:
        rows.append(Row(FD_REVERSE, "SKIPPED", detail=f"reverse mode failed: {failures['rev']}"))

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
                rows.append(Row(title, "SKIPPED", detail=f"{_MODE[mode]} mode failed: {failures[mode]}"))
    return rows


def _flat(tensors: Sequence[Any]) -> Any:
    import torch

    return torch.cat([t.reshape(-1) for t in tensors])


def _matrix(jacobian: Any, output: Any, n_primals: int) -> Any:
    """torch.func's Jacobian (output tree of per-primal blocks) as one (outputs x inputs) matrix."""
    import torch

    blocks = dict(trees.leaves(jacobian))
    rows = []
    for key, out in trees.leaves(output):
        parts = [blocks[trees.join(key, str(i))] for i in range(n_primals)]
        rows.append(torch.cat([b.reshape(out.numel(), -1) for b in parts], dim=1))
    return torch.cat(rows, dim=0)


def _looped(mode: str, f: Callable[..., Any], primals: Sequence[Any], flat_out) -> Any:
    """The (outputs x inputs) Jacobian one jvp per column or one vjp per row, without vmap."""
    import torch

    if mode == "fwd":
        columns = [flat_out(torch.func.jvp(f, tuple(primals), tuple(d))[1]) for d in _basis(primals)]
        return torch.stack(columns, dim=1)
    output, pullback = torch.func.vjp(f, *primals)
    leaves = [t for _, t in trees.leaves(output)]
    rows = [_flat(pullback(trees.unflatten(output, u))) for u in _basis(leaves)]
    return torch.stack(rows, dim=0)


def _basis(tensors: Sequence[Any]) -> Iterator[list]:
    """Every one-hot direction over ``tensors`` together: zeros but a single 1, in flat order."""
    import torch

    for i, t in enumerate(tensors):
        for k in range(t.numel()):
            direction = [torch.zeros_like(q) for q in tensors]
            direction[i].view(-1)[k] = 1
            yield direction


def _central(f: Callable[..., Any], primals: Sequence[Any], v: Sequence[Any], eps: float, flat_out) -> Any:
    import torch

    with torch.no_grad():
        ahead = flat_out(f(*(p + eps * d for p, d in zip(primals, v))))
        behind = flat_out(f(*(p - eps * d for p, d in zip(primals, v))))
    return (ahead - behind) / (2 * eps)


def _fd_jacobian(f: Callable[..., Any], primals: Sequence[Any], eps: float, flat_out) -> Any:
    """The whole Jacobian by central differences, one input element (column) at a time."""
    import torch

    from jaccli import progress

    columns = []
    with progress.bar("check --full: finite differences", sum(p.numel() for p in primals)) as shown:
        for direction in _basis(primals):
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


def _skip_reason(exc: BaseException) -> str:
    """Why a check cannot run (a missing forward-mode formula, say); any other exception is the
    function's or its derivative's own and propagates (exit 3), never hidden as SKIPPED."""
    from jaccli.errors import describe

    if failure_reason(exc) is None:
        raise exc
    return describe(exc)
