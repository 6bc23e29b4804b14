"""``jac check`` rows beyond first-order agreement: the Taylor remainder, batched rules (vmap
against a loop), second derivatives (``--order 2``) and repeatability.

- Taylor remainder: for h halving 8 times, r(h) = |f(x+hv) − f(x) − h·Jv| must fall as h²; the
  log-log slope of r over the smallest steps is reported and must be >= 1.8 (a wrong J·v leaves
  r ~ h, slope 1). A remainder at rounding level (f linear along v) passes. No eps to choose.
  J·v comes from forward mode, else (projected on a random u) from reverse mode:
  |⟨u, f(x+hv) − f(x)⟩ − h·⟨Jᵀu, v⟩|.
- Batched rules (torch.autograd.gradcheck's check_batched_grad idea): vmap of f, of its jvp and of
  its vjp over a few nearby points against a loop of single evaluations; catches a wrong custom
  ``vmap`` staticmethod or ``generate_vmap_rule``.
- Order 2 (gradgradcheck's idea), on the scalar s(x) = ⟨u, f(x)⟩ for a random cotangent u:
  H·v forward-over-reverse against reverse-over-reverse, both against the central difference of
  the gradient (∇s(x+εv) − ∇s(x−εv)) / 2ε, and Hessian symmetry ⟨v_i, H v_j⟩ = ⟨v_j, H v_i⟩.
- Repeatable: two evaluations at the same point (the same seeded random stream) must agree within
  --nondet-tol; a nondeterministic function makes every comparison above meaningless.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

from jaccli import trees
from jaccli.checking.modes import Unavailable, flat, flat_out
from jaccli.checking.rows import (
    BATCHED_F,
    BATCHED_JVP,
    BATCHED_VJP,
    REPEATABLE,
    SECOND_FD_FOR,
    SECOND_FD_ROR,
    SECOND_FOR_ROR,
    SECOND_SYMMETRY,
    TAYLOR,
    Row,
    _compare,
)

STEPS = 8  # h halves this many times minus one
SLOPE_MIN = 1.8


def _describe(exc: BaseException) -> str:
    from jaccli.checking.modes import _reason

    return _reason(exc)


# ---- Taylor remainder ----------------------------------------------------------------------------


def taylor_row(
    f: Callable, primals: Sequence[Any], output: Any, modes: Any, random_like: Callable, u: Any, tol: dict
) -> Row:
    import torch

    dtype = primals[0].dtype
    if dtype in (torch.float16, torch.bfloat16):
        return Row(TAYLOR, "SKIPPED", detail=f"{str(dtype)[6:]} has too few digits for a remainder slope")
    first = 2.0**-4 if dtype == torch.float64 else 2.0**-2
    relative_floor = 2e-12 if dtype == torch.float64 else 1e-4
    v = []
    for p in primals:
        finite = torch.isfinite(p.detach())
        d = torch.where(finite, random_like(p), torch.zeros_like(p))  # infinite entries stay put
        sizes = p.detach().abs()[finite]
        scale = max(1.0, float(sizes.max())) if sizes.numel() else 1.0
        top = float(d.abs().max()) if d.numel() else 1.0
        v.append(d * (scale / top if top > 0 else 1.0))
    base = flat_out(output).detach()
    keep = torch.isfinite(base)  # entries of f(x) that are Inf or NaN have no Taylor expansion
    try:
        jv, how = modes.jvp(v), "forward mode J.v"
        projection = None
    except Unavailable as exc:
        forward_failure = str(exc)
        try:
            g = modes.vjp(u)
        except Unavailable as exc2:
            return Row(TAYLOR, "SKIPPED", detail=f"forward mode failed: {forward_failure}; reverse: {exc2}")
        projection = flat_out(u)
        jv, how = g @ flat(v), "reverse mode <J^T u, v>"
    jv_size = float(jv.abs().max()) if jv.numel() else 0.0
    steps, remainders, floors = [], [], []
    row = None
    for rounds in (1, 2):  # a jump or kink of f within the steps (floor, sort): 8 smaller steps, once
        with torch.no_grad():
            for k in range(len(steps), STEPS * rounds):
                h = first / 2**k
                moved = flat_out(f(*(p + h * d for p, d in zip(primals, v)))).detach()
                if projection is None:
                    rest = (moved - base - h * jv)[keep]
                    r = float(rest.abs().max()) if rest.numel() else 0.0
                    scale = (
                        float(moved[keep].abs().max() + base[keep].abs().max() + (h * jv[keep]).abs().max())
                        if rest.numel()
                        else 0.0
                    )
                else:
                    w = torch.where(keep, projection, torch.zeros_like(projection))
                    r = float((w @ torch.where(keep, moved - base, torch.zeros_like(base)) - h * jv).abs())
                    scale = (
                        float(
                            w.abs().sum() * (moved[keep].abs().max() + base[keep].abs().max()) + abs(h * jv)
                        )
                        if bool(keep.any())
                        else 0.0
                    )
                steps.append(h)
                remainders.append(r)
                floors.append(relative_floor * scale + 1e-300)
        row = _judge_remainders(steps, remainders, floors, how, tol, jv_size)
        if row.verdict == "PASS":
            return row
    if row.slope is not None and row.slope <= 0.5:  # r(h) does not fall at all: f jumps, not J.v
        return Row(
            TAYLOR,
            "SKIPPED",
            detail=row.detail + "; the remainder does not fall: f is not "
            "smooth along v at these steps (a jump or kink), so the test cannot judge J.v",
            slope=row.slope,
        )
    return row


def _judge_remainders(
    steps: list, remainders: list, floors: list, how: str, tol: dict, jv_size: float
) -> Row:
    finite = [math.isfinite(r) for r in remainders]
    if not any(finite):
        return Row(TAYLOR, "SKIPPED", detail="f(x+hv) is NaN or Inf for every step h (outside its domain)")
    last = max(i for i, ok in enumerate(finite) if ok)
    span = f"h = {steps[0]:.3g} .. {steps[last]:.3g}, by {how}"
    worst = remainders[last]
    if all(r <= fl for r, fl, ok in zip(remainders, floors, finite) if ok):
        return Row(
            TAYLOR, "PASS", worst, None, f"remainder at rounding level throughout (f linear along v); {span}"
        )
    if remainders[last] <= floors[last]:
        return Row(
            TAYLOR, "PASS", worst, None, f"remainder falls to rounding level by h = {steps[last]:.3g}; {span}"
        )
    run = []
    for i in range(last, -1, -1):  # the trailing points above rounding level, smallest h first
        if not finite[i] or remainders[i] <= floors[i]:
            break
        run.append(i)
    run = sorted(run)[-5:]
    if len(run) < 2:
        return Row(TAYLOR, "FAIL", worst, None, f"the remainder does not fall with h; {span}")
    xs = [math.log(steps[i]) for i in run]
    ys = [math.log(max(remainders[i], 1e-300)) for i in run]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    slope = sum((a - mx) * (b - my) for a, b in zip(xs, ys)) / sum((a - mx) ** 2 for a in xs)
    detail = (
        f"observed slope {slope:.2f} (want 2, pass >= {SLOPE_MIN}) over h = {steps[run[0]]:.3g} .. "
        f"{steps[run[-1]]:.3g}; remainder {worst:.3g} at the smallest h, by {how}"
    )
    if slope >= SLOPE_MIN:
        return Row(TAYLOR, "PASS", worst, None, detail, slope=slope)
    # r ~ e·h: e bounds the error of J.v; within the tolerances, it is what the fd rows would pass
    small, twice = remainders[run[-1]], remainders[run[-2]]  # r(h) = a h + b h^2 at h and 2h
    implied = abs(4 * small - twice) / (2 * steps[run[-1]])
    allowed = tol["atol"] + tol["rtol"] * jv_size
    if implied <= allowed:
        detail += f"; the J.v error it implies, {implied:.3g}, is within atol + rtol*|J.v| = {allowed:.3g}"
        return Row(TAYLOR, "PASS", worst, None, detail, slope=slope)
    detail += f": J.v is off by about {implied:.3g} (more than atol + rtol*|J.v| = {allowed:.3g})"
    return Row(TAYLOR, "FAIL", worst, None, detail, slope=slope)


# ---- batched rules -------------------------------------------------------------------------------


def batched_rows(
    f: Callable,
    primals: Sequence[Any],
    output: Any,
    tol: dict,
    rng: Any,
    randomness: str,
    random_like: Callable,
) -> list[Row]:
    """vmap of f, of its jvp and of its vjp over a few nearby points, against a loop."""
    import torch

    k = 3
    points = [tuple(primals)]
    for _ in range(k - 1):
        points.append(tuple(p * (1 + 0.05 * random_like(p)) for p in primals))
    tangents = [tuple(random_like(p) for p in primals) for _ in range(k)]
    cotangents = [trees.map_leaves(random_like, output) for _ in range(k)]

    def stack(items: list) -> Any:
        from torch.utils._pytree import tree_map

        return tree_map(lambda *ts: torch.stack(ts), *items)

    def one_f(xs: tuple) -> Any:
        return flat_out(f(*xs))

    def one_jvp(xs: tuple, ts: tuple) -> Any:
        return flat_out(torch.func.jvp(f, xs, ts)[1])

    def one_vjp(xs: tuple, us: Any) -> Any:
        return flat(torch.func.vjp(f, *xs)[1](us))

    cases = (
        (BATCHED_F, one_f, (points,)),
        (BATCHED_JVP, one_jvp, (points, tangents)),
        (BATCHED_VJP, one_vjp, (points, cotangents)),
    )
    rows = []
    for name, one, columns in cases:
        try:
            looped = torch.stack([one(*args) for args in zip(*columns)]).detach()
        except Exception as exc:  # noqa: BLE001 - torch.func cannot run it one at a time
            rows.append(Row(name, "SKIPPED", detail=f"torch.func cannot run it: {_describe(exc)}"))
            continue
        try:
            batched = torch.func.vmap(one, randomness=randomness)(*(stack(c) for c in columns)).detach()
        except Exception as exc:  # noqa: BLE001
            rows.append(Row(name, "SKIPPED", detail=f"vmap cannot batch it: {_describe(exc)}"))
            continue
        rows.append(_compare(name, batched, looped, tol, None, "sample", ("vmap", "loop")))
    return rows


# ---- second order --------------------------------------------------------------------------------


class _Second:
    """∇s and H·v of s(x) = ⟨u, f(x)⟩ by torch.func, else torch.autograd."""

    def __init__(self, f: Callable, primals: Sequence[Any], u: Any):
        self.f, self.primals, self.u = f, tuple(primals), u
        self.every = tuple(range(len(self.primals)))

    def scalar(self, *xs: Any) -> Any:
        out = self.f(*xs)
        return sum((a * b).sum() for (_, a), (_, b) in zip(trees.leaves(out), trees.leaves(self.u)))

    def _func_grad(self, *xs: Any) -> tuple:
        import torch

        return torch.func.grad(self.scalar, argnums=self.every)(*xs)

    def _autograd_grad(self, xs: Sequence[Any], create_graph: bool) -> list:
        import torch

        leaves = [x if x.requires_grad else x.detach().clone().requires_grad_(True) for x in xs]
        with torch.enable_grad():
            s = self.scalar(*leaves)
            if not s.requires_grad:
                return leaves, [torch.zeros_like(x) for x in leaves]
            grads = torch.autograd.grad(s, leaves, create_graph=create_graph, allow_unused=True)
        return leaves, [torch.zeros_like(x) if g is None else g for x, g in zip(leaves, grads)]

    def gradient(self, xs: Sequence[Any]) -> Any:
        try:
            return flat(self._func_grad(*xs)).detach()
        except Exception:  # noqa: BLE001
            return flat(self._autograd_grad(xs, False)[1]).detach()

    def reverse_over_reverse(self, v: Sequence[Any]) -> tuple[Any, str]:
        import torch

        try:
            _, pull = torch.func.vjp(self._func_grad, *self.primals)
            return flat(pull(tuple(v))).detach(), "torch.func"
        except Exception as first:  # noqa: BLE001
            try:
                with torch.enable_grad():
                    leaves, grads = self._autograd_grad(self.primals, True)
                    pairs = [(g, d) for g, d in zip(grads, v) if g.requires_grad]
                    if not pairs:
                        return flat([torch.zeros_like(x) for x in leaves]), "torch.autograd"
                    hv = torch.autograd.grad(
                        [g for g, _ in pairs], leaves, [d for _, d in pairs], allow_unused=True
                    )
                return flat(
                    [torch.zeros_like(x) if h is None else h for x, h in zip(leaves, hv)]
                ), "torch.autograd"
            except Exception as second:  # noqa: BLE001
                why = f"{_describe(first)} (torch.func); {_describe(second)} (torch.autograd)"
                raise Unavailable(why) from None

    def forward_over_reverse(self, v: Sequence[Any]) -> tuple[Any, str]:
        import torch
        import torch.autograd.forward_ad as fwad

        try:
            return flat(torch.func.jvp(self._func_grad, self.primals, tuple(v))[1]).detach(), "torch.func"
        except Exception as first:  # noqa: BLE001
            try:
                with fwad.dual_level(), torch.enable_grad():
                    duals = [
                        fwad.make_dual(p.detach().clone(), d).requires_grad_(True)
                        for p, d in zip(self.primals, v)
                    ]
                    _, grads = self._autograd_grad(duals, True)
                    parts = []
                    for x, g in zip(duals, grads):
                        t = fwad.unpack_dual(g).tangent
                        parts.append(torch.zeros_like(x) if t is None else t.detach().clone())
                return flat(parts), "torch.autograd.forward_ad"
            except Exception as second:  # noqa: BLE001
                why = f"{_describe(first)} (torch.func); {_describe(second)} (forward_ad)"
                raise Unavailable(why) from None


def second_order_rows(
    f: Callable, primals: Sequence[Any], output: Any, tol: dict, vs: list, u: Any, random_like: Callable
) -> list[Row]:
    import torch

    second = _Second(f, primals, u)
    vs = list(vs) if len(vs) >= 2 else [*vs, tuple(random_like(p) for p in primals)]
    eps = tol["eps"]
    fd = []
    for v in vs:
        ahead = second.gradient([p + eps * d for p, d in zip(primals, v)])
        behind = second.gradient([p - eps * d for p, d in zip(primals, v)])
        fd.append((ahead - behind) / (2 * eps))
    fd = torch.stack(fd)
    found: dict[str, Any] = {}
    failed: dict[str, str] = {}
    for name, method in (("ror", second.reverse_over_reverse), ("for", second.forward_over_reverse)):
        try:
            found[name] = torch.stack([method(v)[0] for v in vs])
        except Unavailable as exc:
            failed[name] = str(exc)
    rows = []
    if "for" in found and "ror" in found:
        rows.append(
            _compare(
                SECOND_FOR_ROR,
                found["for"],
                found["ror"],
                tol,
                None,
                "direction",
                ("fwd-over-rev", "rev-over-rev"),
            )
        )
    else:
        which = "forward-over-reverse" if "for" in failed else "reverse-over-reverse"
        rows.append(
            Row(SECOND_FOR_ROR, "SKIPPED", detail=f"{which} failed: {failed.get('for') or failed.get('ror')}")
        )
    for name, key, side in ((SECOND_FD_ROR, "ror", "rev-over-rev"), (SECOND_FD_FOR, "for", "fwd-over-rev")):
        if key in found:
            rows.append(_compare(name, found[key], fd, tol, None, "direction", (side, "fd of gradient")))
        else:
            rows.append(Row(name, "SKIPPED", detail=f"{side} failed: {failed[key]}"))
    hv = found.get("ror", found.get("for"))
    if hv is None:
        rows.append(Row(SECOND_SYMMETRY, "SKIPPED", detail="no Hessian-vector product could run"))
    else:
        basis = torch.stack([flat(v) for v in vs])  # directions x inputs
        m = basis @ hv.T  # m[i, j] = <v_i, H v_j>
        rows.append(
            _compare(SECOND_SYMMETRY, m, m.T, tol, None, "pair (v_i, H v_j)", ("<v_i,Hv_j>", "<v_j,Hv_i>"))
        )
    return rows


# ---- repeatability -------------------------------------------------------------------------------


def repeat_row(f: Callable, primals: Sequence[Any], output: Any, nondet_tol: float) -> Row:
    import torch

    with torch.no_grad():
        again = flat_out(f(*primals)).detach()
    first = flat_out(output).detach()
    if first.numel() == 0:
        return Row(REPEATABLE, "PASS", 0.0, 0.0, counts=False)
    same_nan = torch.isnan(first) & torch.isnan(again)
    diff = torch.where(same_nan, torch.zeros_like(first), (again - first).abs()).double()
    worst = float(diff.max())
    if not math.isfinite(worst) or worst > nondet_tol:
        detail = (
            f"two evaluations at the same point differ by {worst:.3g} "
            f"(more than --nondet-tol {nondet_tol:g}): "
            "the function is nondeterministic, so the comparisons above may mean little; make it "
            "deterministic (torch's random stream is seeded by --seed) or raise --nondet-tol"
        )
        return Row(REPEATABLE, "FAIL", worst, None, detail, counts=False)
    return Row(REPEATABLE, "PASS", worst, None, counts=False)
