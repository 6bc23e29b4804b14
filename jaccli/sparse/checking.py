"""``jac check --sparse``: a sparse Jacobian against dense products in random directions.

The sparse Jacobian J_s (detected pattern, or --sparsity's) is computed as ``jac jacobian
--sparse`` would; then for random v and u, J_s·v is compared with torch.func.jvp's J·v and
uᵀJ_s with torch.func.vjp's uᵀJ. A pattern that misses a nonzero shows up as a difference (with
probability one for random directions); where the dense Jacobian is small enough it is also
computed, and the entries the pattern misses are counted and the first is named.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

DENSE_LIMIT = 4_000_000  # entries: compute the dense Jacobian to name missed entries


def check_sparse(request: Any) -> Any:
    import numpy as np
    import torch

    from jaccli.checking import rows as check
    from jaccli.pipeline.delivery import check_footer
    from jaccli.pipeline.request import CheckOutcome
    from jaccli.sparse import compressed
    from jaccli.sparse.command import _choose, _pattern, _problem, _validate

    request = replace(request, command="jacobian")
    _validate(request, ("jacobian",))
    problem = _problem(request, ("jacobian",))
    setup, timings = problem.setup, problem.setup.timings
    dtype = str(setup.primals[0].dtype).replace("torch.", "")
    tolerance = check.tolerances(dtype, rtol=request.rtol, atol=request.atol, eps=request.eps)
    pattern, given, fallbacks = _pattern(request, problem, False)
    with timings.phase("colour"):
        mode, colours, why = _choose(request, pattern, given)
        plan = compressed.plan(mode, pattern, colours)
    shapes = [tuple(problem.sample[a].shape) for a in problem.argnums]
    sizes = [problem.sample[a].numel() for a in problem.argnums]
    engine = compressed.Compressed(setup.fn, problem.argnums, sizes, shapes, plan, request.chunk_size)
    primals = setup.primals
    rows = []
    with timings.phase("checks"):
        from jaccli.autodiff.transforms import guarded

        values = guarded(lambda: engine.values(primals), "jacobian --sparse")
        import scipy.sparse as sp

        p = plan.pattern
        js = sp.csr_matrix((values.detach().cpu().numpy(), p.indices, p.indptr), shape=p.shape)
        flat = engine._flat_fn(primals)
        diff = [primals[a] for a in problem.argnums]
        gen = torch.Generator().manual_seed(int(request.seed))
        worst_fwd, worst_rev = [], []
        for _ in range(request.directions):
            v = torch.randn(problem.n, generator=gen, dtype=diff[0].dtype)
            tangents = [t.reshape(s) for t, s in zip(v.split(sizes), shapes)]
            pushed = lambda tangents=tangents: torch.func.jvp(flat, tuple(diff), tuple(tangents))[1]  # noqa: E731
            dense = guarded(pushed, "jvp")
            worst_fwd.append((js @ v.numpy(), dense.detach().cpu().numpy()))
            u = torch.randn(problem.m, generator=gen, dtype=diff[0].dtype)
            _, pull = torch.func.vjp(flat, *diff)
            back = guarded(lambda pull=pull, u=u: torch.cat([g.reshape(-1) for g in pull(u)]), "vjp")
            worst_rev.append((js.T @ u.numpy(), back.detach().cpu().numpy()))
        rows.append(_row("sparse J.v against dense jvp", worst_fwd, tolerance, "output element"))
        rows.append(_row("sparse u^T.J against dense vjp", worst_rev, tolerance, "input element"))
        if problem.m * problem.n <= DENSE_LIMIT:
            dense = torch.func.jacrev(flat, argnums=tuple(range(len(diff))))(*diff)
            full = torch.cat([d.reshape(problem.m, -1) for d in dense], 1).detach().cpu().numpy()
            missed = (full != 0) & ~pattern.toarray()
            count = int(missed.sum())
            if count:
                i, j = np.argwhere(missed)[0]
                rows.append(
                    check.Row(
                        "pattern covers the dense Jacobian",
                        "FAIL",
                        float(np.abs(full[missed]).max()),
                        None,
                        f"the pattern misses {count} nonzero entr{'y' if count == 1 else 'ies'}, first at "
                        f"(output {int(i)}, input {int(j)})",
                    )
                )
            else:
                rows.append(
                    check.Row(
                        "pattern covers the dense Jacobian",
                        "PASS",
                        0.0,
                        0.0,
                        f"{pattern.nnz} stored, {int((full != 0).sum())} nonzero",
                    )
                )
        else:
            rows.append(
                check.Row(
                    "pattern covers the dense Jacobian",
                    "SKIPPED",
                    detail=(
                        f"{problem.m} x {problem.n} is too large to compute densely; "
                        "the products above check it"
                    ),
                )
            )
    report = check.Report(rows, tolerance, dtype)
    report.notes.append(f"mode: {why}")
    if fallbacks:
        report.notes.append("ops without a sparsity rule: " + ", ".join(fallbacks))
    check_footer(timings, "check --sparse", setup, dtype, request)
    return CheckOutcome(report, timings)


def _row(name: str, pairs: list, tolerance: dict, what: str) -> Any:
    import numpy as np

    from jaccli.checking import rows as check

    rtol, atol = tolerance["rtol"], tolerance["atol"]
    max_abs, max_rel, worst, failed = 0.0, 0.0, None, False
    for got, want in pairs:
        diff = np.abs(got - want)
        if diff.size == 0:
            continue
        k = int(diff.argmax())
        rel = diff / np.maximum(np.abs(want), 1e-300)
        if diff[k] > max_abs:
            max_abs, worst = float(diff[k]), k
        max_rel = max(max_rel, float(np.where(diff > 0, rel, 0).max()))
        failed |= bool((diff > atol + rtol * np.abs(want)).any())
    detail = ""
    if failed:
        detail = (
            f"worst at {what} {worst}: the sparse Jacobian misses a dependence there (is the --sparsity "
            "pattern right for this function?)"
        )
    return check.Row(name, "FAIL" if failed else "PASS", max_abs, max_rel, detail)
