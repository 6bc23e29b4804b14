"""``jac spectrum``: singular values of J, eigenvalues of a square J, or of a Hessian, from
products alone (J is never formed, except from min(m, n) products when it is tiny).

Which scipy solver answers which question is data (``PROBLEMS``): ARPACK's Lanczos for
singular values (``svds``, over J^T.J) and symmetric Hessians (``eigsh``), implicitly restarted
Arnoldi for a square J (``eigs``). Each returned pair is checked with fresh products: the
residual ``max(||J v - s u||, ||J^T u - s v||)`` for singular triplets, ``||J v - l v||`` for
eigenpairs, relative to the largest value found (an estimate of ||J||_2). Products are counted
and reported per purpose: the values, the residuals, the condition number's other end.

For singular values there is also an estimate of the 2-norm condition number s_max / s_min and
of the numerical rank (the values above ``rank_tol x s_max``), each marked exact (dense), an
estimate (both ends of the spectrum solved for) or a bound (one end only).
"""

from __future__ import annotations

import contextlib
import sys
from dataclasses import dataclass, field, replace
from typing import IO, Any, BinaryIO

from jaccli.errors import InputError
from jaccli.report.timing import Timings

DENSE_MAX = 16  # at most this many singular values (or eigenvalues): J formed from products instead
COND_PRODUCTS = 200  # the condition number's far end gets at most about this many products


@dataclass(frozen=True)
class Problem:
    """One kind of spectrum: the scipy solver, its ``which`` codes, and the most ``k`` it allows."""

    name: str  # svd, eig, hessian
    what: str  # for messages and the text table
    solver: str  # scipy.sparse.linalg function
    which: dict  # (--which, --by) -> ARPACK's which
    spare: int  # ARPACK needs k <= size - spare (svds: k < min(m, n); eigs: k < n - 1; eigsh: k < n)


PROBLEMS = {
    "svd": Problem(
        "svd",
        "singular values of J",
        "svds",
        {("largest", "magnitude"): "LM", ("smallest", "magnitude"): "SM"},
        1,
    ),
    "eig": Problem(
        "eig",
        "eigenvalues of J",
        "eigs",
        {
            ("largest", "magnitude"): "LM",
            ("smallest", "magnitude"): "SM",
            ("largest", "real"): "LR",
            ("smallest", "real"): "SR",
        },
        2,
    ),
    "hessian": Problem(
        "hessian",
        "eigenvalues of the Hessian",
        "eigsh",
        {
            ("largest", "magnitude"): "LM",
            ("smallest", "magnitude"): "SM",
            ("largest", "real"): "LA",
            ("smallest", "real"): "SA",
        },
        1,
    ),
}
WHICH = ("largest", "smallest")
BY = ("magnitude", "real")


@dataclass
class Spectrum:
    """One spectrum: values (k,), vectors as rows, residuals, and how they were found."""

    values: Any
    right: Any  # (k, n): right singular vectors, or eigenvectors
    left: Any = None  # (k, m): left singular vectors (svd only)
    residuals: Any = None
    method: str = ""
    products: dict = field(default_factory=dict)  # purpose -> count
    condition: float | None = None
    condition_kind: str = ""  # exact, estimate, lower bound
    rank: int | None = None
    rank_kind: str = ""  # exact, at least, at most
    rank_tol: float | None = None  # absolute
    notes: list = field(default_factory=list)


def problem_of(request: Any) -> Problem:
    if request.eig and request.hessian:
        raise InputError(
            "--eig and --hessian: choose one (the Hessian is square and symmetric: --hessian alone)"
        )
    return PROBLEMS["hessian" if request.hessian else "eig" if request.eig else "svd"]


def check_options(request: Any, problem: Problem) -> None:
    if request.top is not None and request.top < 1:
        raise InputError(f"--top {request.top}: ask for 1 or more values")
    if request.which not in WHICH:
        raise InputError(f"--which {request.which!r}: use largest or smallest")
    if request.by not in BY:
        raise InputError(f"--by {request.by!r}: use magnitude or real")
    if problem.name == "svd" and request.by != "magnitude":
        raise InputError("--by real is for eigenvalues (--eig, --hessian); singular values are real and >= 0")
    if request.rank_tol is not None and request.rank_tol < 0:
        raise InputError(f"--rank-tol {request.rank_tol}: a tolerance is 0 or more")
    if request.tol is not None and request.tol < 0:
        raise InputError(f"--tol {request.tol}: a tolerance is 0 or more")


DEFAULT_TOP = 6


def default_top(shape: tuple[int, int]) -> int:
    """Without --top: 6, or every value ARPACK-style requests allow on a smaller J (at least 1)."""
    return max(1, min(DEFAULT_TOP, min(shape) - 1))


def check_size(problem: Problem, k: int, shape: tuple[int, int]) -> None:
    """``k`` against what J (m x n) has: one clear line when it cannot be done."""
    m, n = shape
    if problem.name == "eig" and m != n:
        raise InputError(
            f"--eig needs a square Jacobian; this one is {m} x {n} (outputs x inputs): use singular "
            "values (jac spectrum without --eig), or --argnums to choose inputs as many as the outputs"
        )
    size = min(m, n)
    if k >= size:
        noun = "singular values" if problem.name == "svd" else "eigenvalues"
        raise InputError(
            f"--top {k}: J is {m} x {n}, so it has {size} {noun}; jac spectrum finds at most {size - 1} "
            f"(--top {max(size - 1, 1)}); for all of them form J (jac jacobian --flatten), then numpy.linalg"
            if size > 1
            else f"J is {m} x {n}: its one singular value is the norm of J itself (jac jacobian, or jac vjp)"
        )


def solve(
    op: Any, problem: Problem, k: int, which: str, by: str, seed: int, tol: float, rank_tol: float | None
) -> Spectrum:
    """The spectrum of ``op`` (a jaccli.linalg.operators.Operator)."""
    import numpy as np

    m, n = op.shape
    size = min(m, n)
    rng = np.random.default_rng(seed)
    dense = size <= DENSE_MAX or k > size - problem.spare
    before = dict(op.products)
    if dense:
        spectrum = _dense(op, problem, k, which, by)
    else:
        spectrum = _arpack(op, problem, k, which, by, rng, tol)
    spectrum.products["values"] = _spent(op, before)
    before = dict(op.products)
    _residuals(op, problem, spectrum)
    spectrum.products["residuals"] = _spent(op, before)
    if problem.name == "svd":
        before = dict(op.products)
        _condition_and_rank(op, spectrum, which, dense, rng, tol, rank_tol)
        if _spent(op, before):
            spectrum.products["condition"] = _spent(op, before)
    spectrum.notes.extend(op.notes)
    return spectrum


def _spent(op: Any, before: dict) -> int:
    return op.used - sum(before.values())


def _order(values: Any, which: str, by: str) -> Any:
    """Indices of ``values`` from the most to the least extreme, in the sense asked for."""
    import numpy as np

    key = np.real(values) if by == "real" else np.abs(values)
    key = -key if which == "largest" else key
    return np.lexsort((-np.imag(values), key))  # ties (conjugate pairs): positive imaginary part first


def _dense(op: Any, problem: Problem, k: int, which: str, by: str) -> Spectrum:
    import numpy as np

    matrix = op.dense()
    m, n = op.shape
    how = "columns J.e_j" if n <= m else "rows e_i^T.J"
    method = f"dense: the {m} x {n} matrix formed from {min(m, n)} products ({how}), then numpy.linalg"
    if problem.name == "svd":
        u, s, vh = np.linalg.svd(matrix, full_matrices=False)
        pick = _order(s, which, by)[:k]
        spectrum = Spectrum(s[pick], vh[pick], u[:, pick].T, method=method)
        spectrum.all_values = s  # type: ignore[attr-defined]
        return spectrum
    if problem.name == "hessian":
        values, vectors = np.linalg.eigh((matrix + matrix.T) / 2)
    else:
        values, vectors = np.linalg.eig(matrix)
    pick = _order(values, which, by)[:k]
    return Spectrum(values[pick], vectors[:, pick].T, method=method)


def _arpack(op: Any, problem: Problem, k: int, which: str, by: str, rng: Any, tol: float) -> Spectrum:
    import numpy as np
    from scipy.sparse.linalg import ArpackNoConvergence, eigs, eigsh, svds

    code = problem.which[(which, by)]
    operator = op.scipy()
    m, n = op.shape
    try:
        if problem.name == "svd":
            v0 = rng.standard_normal(min(m, n))
            u, s, vh = svds(operator, k=k, which=code, tol=tol, v0=v0, solver="arpack")
            pick = _order(s, which, by)
            return Spectrum(s[pick], vh[pick], u[:, pick].T, method=f"ARPACK (scipy svds, which={code})")
        v0 = rng.standard_normal(n)
        solver = eigsh if problem.name == "hessian" else eigs
        values, vectors = solver(operator, k=k, which=code, tol=tol, v0=v0)
    except ArpackNoConvergence as exc:
        raise InputError(
            f"ARPACK did not converge to the {k} {which} {_noun(problem)} after {op.used} products "
            f"({len(exc.eigenvalues)} converged): ask for fewer (--top), loosen --tol, or for "
            "--which smallest try the largest first"
        ) from None
    pick = _order(values, which, by)
    vectors = vectors[:, pick].T
    if problem.name == "eig":  # a phase that makes the largest entry real and positive: reproducible
        big = np.argmax(np.abs(vectors), axis=1)
        phase = vectors[np.arange(len(big)), big]
        vectors = vectors * (np.abs(phase) / np.where(phase == 0, 1, phase))[:, None]
    return Spectrum(values[pick], vectors, method=f"ARPACK (scipy {problem.solver}, which={code})")


def _noun(problem: Problem) -> str:
    return "singular values" if problem.name == "svd" else "eigenvalues"


def _residuals(op: Any, problem: Problem, spectrum: Spectrum) -> None:
    import numpy as np

    values = spectrum.values
    scale = float(np.max(np.abs(values))) if len(values) else 0.0
    if problem.name == "svd" and getattr(spectrum, "all_values", None) is not None:
        scale = float(np.max(spectrum.all_values))
    scale = scale if scale > 0 else 1.0
    out = []
    for i, value in enumerate(values):
        v = spectrum.right[i]
        if problem.name == "svd":
            u = spectrum.left[i]
            r = max(np.linalg.norm(op.matvec(v) - value * u), np.linalg.norm(op.rmatvec(u) - value * v))
        elif np.iscomplexobj(v):
            jv = op.matvec(v.real) + 1j * op.matvec(v.imag) if np.any(v.imag) else op.matvec(v.real)
            r = np.linalg.norm(jv - value * v) / np.linalg.norm(v)
        else:
            r = np.linalg.norm(op.matvec(v) - value * v) / np.linalg.norm(v)
        out.append(r / scale)
    spectrum.residuals = np.array(out, dtype=np.float64)


def _condition_and_rank(
    op: Any, spectrum: Spectrum, which: str, dense: bool, rng: Any, tol: float, rank_tol: float | None
) -> None:
    """s_max / s_min and the count above the rank tolerance, from what is known of both ends."""
    import numpy as np

    m, n = op.shape
    size = min(m, n)
    found = np.asarray(spectrum.values)
    relative = rank_tol if rank_tol is not None else max(m, n) * np.finfo(np.float64).eps
    if dense:
        values = spectrum.all_values  # type: ignore[attr-defined]
        top, bottom, kind = float(values.max()), float(values.min()), "exact"
        spectrum.rank_tol = relative * top
        spectrum.rank, spectrum.rank_kind = int(np.sum(values > spectrum.rank_tol)), "exact"
    else:
        other = _far_end(op, "smallest" if which == "largest" else "largest", rng, tol)
        if which == "largest":
            top = float(found.max())
            bottom, kind = (other, "estimate") if other is not None else (float(found.min()), "lower bound")
        else:
            bottom = float(found.min())
            top, kind = (other, "estimate") if other is not None else (float(found.max()), "lower bound")
        spectrum.rank_tol = relative * top
        below = int(np.sum(found <= spectrum.rank_tol))
        if which == "largest":
            if below:
                spectrum.rank, spectrum.rank_kind = len(found) - below, "exact"
            elif other is not None and other > spectrum.rank_tol:
                spectrum.rank, spectrum.rank_kind = size, "exact"
            else:
                spectrum.rank, spectrum.rank_kind = len(found), "at least"
        elif below < len(found):
            spectrum.rank, spectrum.rank_kind = size - below, "exact"
        else:
            spectrum.rank, spectrum.rank_kind = size - below, "at most"
        if kind == "lower bound":
            end = "smallest" if which == "largest" else "largest"
            spectrum.notes.append(
                f"the {end} singular value did not converge within about {COND_PRODUCTS} products: "
                "the condition number is a lower bound"
            )
    spectrum.condition = top / bottom if bottom > 0 else float("inf")
    spectrum.condition_kind = kind


def _far_end(op: Any, which: str, rng: Any, tol: float) -> float | None:
    """The one singular value at the other end, within a product budget; None if it did not converge."""
    from scipy.sparse.linalg import ArpackNoConvergence, svds

    m, n = op.shape
    ncv = min(min(m, n) - 1, 20)
    maxiter = max(1, COND_PRODUCTS // (2 * ncv))
    try:
        s = svds(
            op.scipy(),
            k=1,
            which="LM" if which == "largest" else "SM",
            tol=max(tol, 1e-10),
            v0=rng.standard_normal(min(m, n)),
            ncv=ncv,
            maxiter=maxiter,
            return_singular_vectors=False,
            solver="arpack",
        )
    except ArpackNoConvergence:
        return None
    return float(s[0])


# ---------------------------------------------------------------------------------------------
# The command: a Request in, results out.


@dataclass
class SpectrumOutcome:
    results: dict  # key -> numpy array (a batch dimension leads under --batch-dim)
    spectra: list  # one Spectrum per sample
    problem: Problem
    shape: tuple
    timings: Timings
    request: Any
    notes: list = field(default_factory=list)


def run_spectrum(request: Any, stdout: BinaryIO | None = None) -> SpectrumOutcome:
    """``jac spectrum``: float64 unless --dtype says otherwise; nothing is written."""
    from jaccli.pipeline.request import check_request

    check_request(request, stdout)
    problem = problem_of(request)
    check_options(request, problem)
    try:
        import scipy.sparse.linalg  # noqa: F401
    except ImportError:
        raise InputError(
            "jac spectrum needs scipy: pip install 'jaccli[spectrum]' (or pip install scipy)"
        ) from None
    request = replace(request, dtype=request.dtype or "float64")
    _check_keys(request, problem)
    with contextlib.redirect_stdout(sys.stderr):  # the user's code may print
        return _run(request, problem)


def _run(request: Any, problem: Problem) -> SpectrumOutcome:
    import torch

    from jaccli.autodiff import transforms
    from jaccli.linalg.operators import HessianOperator, JacobianOperator
    from jaccli.pipeline.problem import argnum_tuple, disciplined, load

    setup = disciplined(load(request, ("spectrum",)), request)
    fn, primals, timings, batch = setup.fn, setup.primals, setup.timings, request.batch_dim
    wrt = argnum_tuple(setup.argnums)
    samples = (
        [list(primals)]
        if batch is None
        else [[p.select(batch, b) for p in primals] for b in range(primals[0].shape[batch])]
    )
    if not samples:
        raise InputError(f"--batch-dim {batch}: the batch is empty; nothing to compute")
    output = setup.output  # of the first sample
    if problem.name == "hessian":
        from jaccli.pipeline.problem import check_scalar

        check_scalar("spectrum --hessian", output)
    if request.strict:
        transforms.strict_check(fn, samples[0], wrt, request.has_aux)
    kind = HessianOperator if problem.name == "hessian" else JacobianOperator
    spectra, shape = [], None
    tol = request.tol if request.tol is not None else 0.0
    with timings.phase("spectrum"):
        for sample in samples:
            op = kind(fn, sample, wrt, request.has_aux)
            shape = op.shape
            k = request.top if request.top is not None else default_top(op.shape)
            check_size(problem, k, op.shape)
            spectra.append(
                solve(op, problem, k, request.which, request.by, request.seed, tol, request.rank_tol)
            )
    timings.series("function alone", lambda: [fn(*s) for s in samples], request.repeat, request.warmup)
    results = _results(problem, spectra, batch is not None, vectors=request.out not in (None, "-"))
    if request.select is not None:
        results = {request.select: results[request.select]}
    notes = sorted({n for s in spectra for n in s.notes})
    solver = "dense numpy.linalg" if spectra[0].method.startswith("dense") else f"ARPACK {problem.solver}"
    timings.footer.update(
        command="spectrum",
        engine=f"{solver} over torch.autograd products",
        device=str(setup.device),
        dtype=str(primals[0].dtype).replace("torch.", ""),
        torch=str(torch.__version__),
    )
    return SpectrumOutcome(results, spectra, problem, shape, timings, request, notes)


KEYS = {
    "svd": ("singular_values", "residuals", "condition", "condition_kind", "rank", "rank_kind", "rank_tol"),
    "eig": ("eigenvalues.real", "eigenvalues.imag", "residuals"),
    "hessian": ("eigenvalues", "residuals"),
}
VECTOR_KEYS = {
    "svd": ("left_vectors", "right_vectors"),
    "eig": ("eigenvectors.real", "eigenvectors.imag"),
    "hessian": ("eigenvectors",),
}


def _check_keys(request: Any, problem: Problem) -> None:
    """--select and the output format against the keys this request will give, before any work."""
    from jaccli.io.outputs import check_count
    from jaccli.pipeline.request import output_format

    keys = [*KEYS[problem.name], "products"]
    if request.out not in (None, "-"):
        keys += VECTOR_KEYS[problem.name]
    if request.select is not None and request.select not in keys:
        raise InputError(f"--select {request.select!r}: no such result; the keys are {', '.join(keys)}")
    chosen = [request.select] if request.select else keys
    check_count(output_format(request), chosen, f"-o {request.out}" if request.out else "--format npy")


def _results(problem: Problem, spectra: list, batched: bool, vectors: bool) -> dict:
    """Keys as docs/linalg.md names them; vectors only into a file (-o)."""
    import numpy as np

    def stack(get: Any) -> Any:
        arrays = [np.asarray(get(s)) for s in spectra]
        return np.stack(arrays) if batched else arrays[0]

    products = lambda s: sum(s.products.values())  # noqa: E731
    if problem.name == "svd":
        out = {"singular_values": stack(lambda s: s.values)}
        if vectors:
            out["left_vectors"] = stack(lambda s: s.left)
            out["right_vectors"] = stack(lambda s: s.right)
        out.update(
            residuals=stack(lambda s: s.residuals),
            condition=stack(lambda s: np.float64(s.condition)),
            condition_kind=stack(lambda s: np.str_(s.condition_kind)),
            rank=stack(lambda s: np.int64(s.rank)),
            rank_kind=stack(lambda s: np.str_(s.rank_kind)),
            rank_tol=stack(lambda s: np.float64(s.rank_tol)),
            products=stack(lambda s: np.int64(products(s))),
        )
        return out
    if problem.name == "eig":
        out = {
            "eigenvalues.real": stack(lambda s: np.real(s.values)),
            "eigenvalues.imag": stack(lambda s: np.imag(s.values)),
        }
        if vectors:
            out["eigenvectors.real"] = stack(lambda s: np.real(s.right))
            out["eigenvectors.imag"] = stack(lambda s: np.imag(s.right))
    else:
        out = {"eigenvalues": stack(lambda s: np.real(s.values))}
        if vectors:
            out["eigenvectors"] = stack(lambda s: np.real(s.right))
    out["residuals"] = stack(lambda s: s.residuals)
    out["products"] = stack(lambda s: np.int64(products(s)))
    return out


def deliver_spectrum(outcome: SpectrumOutcome, text_stdout: IO[str], stdout: IO[bytes]) -> None:
    from jaccli.io import outputs
    from jaccli.pipeline.delivery import write_timings
    from jaccli.pipeline.request import output_format
    from jaccli.report.record import for_output

    request = outcome.request
    fmt = output_format(request)
    with outcome.timings.phase("write"):
        record = for_output(request, outcome.timings, fmt)
        if request.out is not None and request.out != "-":
            outputs.write_results(request.out, fmt, outcome.results, record)
        elif fmt == "text":
            render(text_stdout, outcome)
        else:
            outputs.write_stream(stdout, fmt, outcome.results, record)
    write_timings(outcome.timings, request)


def render(stream: IO[str], outcome: SpectrumOutcome) -> None:
    """A small table per spectrum; values to 6 significant digits."""
    problem, request = outcome.problem, outcome.request
    m, n = outcome.shape
    what = problem.what
    by = "magnitude" if request.by == "magnitude" else "real part"
    order = request.which if problem.name == "svd" else f"{request.which} by {by}"
    for b, s in enumerate(outcome.spectra):
        if len(outcome.spectra) > 1:
            stream.write(f"sample {b}:\n")
        matrix = f"{m} x {n}" if problem.name != "hessian" else f"{n} x {n}"
        stream.write(f"{what} ({matrix}): the {len(s.values)} {order}; {s.method}\n")
        header = "singular value" if problem.name == "svd" else "eigenvalue"
        rows = [("#", header, "residual")]
        for i, (value, r) in enumerate(zip(s.values, s.residuals), 1):
            rows.append((str(i), _number(value), f"{r:.1e}"))
        widths = [max(len(row[c]) for row in rows) for c in range(3)]
        for row in rows:
            stream.write(
                "  " + row[0].rjust(widths[0]) + "  " + row[1].ljust(widths[1]) + "  " + row[2] + "\n"
            )
        if problem.name == "svd":
            relation = {"exact": "", "estimate": "~ ", "lower bound": ">= "}[s.condition_kind]
            stream.write(
                f"condition number (2-norm): {relation}{_number(s.condition)} ({s.condition_kind})\n"
            )
            relation = {"exact": "", "at least": ">= ", "at most": "<= "}[s.rank_kind]
            stream.write(
                f"numerical rank: {relation}{s.rank} ({s.rank_kind}; values above {s.rank_tol:.1e})\n"
            )
        used = ", ".join(f"{v} for the {k}" for k, v in s.products.items() if v)
        stream.write(f"products: {sum(s.products.values())} ({used})\n")
    stream.flush()


def _number(value: Any) -> str:
    import numpy as np

    if np.iscomplexobj(value) and value.imag != 0:
        sign = "+" if value.imag >= 0 else "-"
        return f"{value.real:.6g} {sign} {abs(value.imag):.6g}j"
    value = float(np.real(value))
    return "inf" if value == float("inf") else f"{value:.6g}"
