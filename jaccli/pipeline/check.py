"""``jac check`` as a pipeline: request, problem (float64 unless --dtype says otherwise), the
checks, the report, delivery. Nothing is written before :func:`deliver_check`."""

from __future__ import annotations

import contextlib
import sys
from dataclasses import replace
from typing import IO, BinaryIO

from jaccli.errors import InputError
from jaccli.io.streams import UserStdout
from jaccli.pipeline import problem as stage
from jaccli.pipeline.delivery import check_footer, write_timings
from jaccli.pipeline.request import CheckOutcome, Request, check_request, output_format


def run_check(request: Request, stdout: BinaryIO | None = None) -> CheckOutcome:
    """``jac check``: float64 unless --dtype says otherwise; nothing is written."""
    check_request(request, stdout)
    fmt = output_format(request)
    if fmt not in ("text", "json", "yaml"):
        raise InputError(f"jac check writes a report: use text, json or yaml, not {fmt}")
    if request.batch_dim is not None:
        raise InputError("jac check does not take --batch-dim; check one sample")
    request = replace(request, dtype=request.dtype or "float64")
    from jaccli.checking.plan import refuse_sparse

    refuse_sparse(request.primals)
    with contextlib.redirect_stdout(UserStdout(sys.stderr)):
        if request.sparse or request.sparsity:
            from jaccli.sparse.checking import check_sparse

            return check_sparse(request)
        return _check(request)


def _check(request: Request) -> CheckOutcome:
    from jaccli.autodiff import transforms
    from jaccli.checking import plan, rows

    problem = stage.disciplined(stage.load(request, ("check",)), request)
    fn, primals, timings = problem.fn, problem.primals, problem.timings
    output = problem.output
    whole = plan.whole_jacobians(request, primals, output)
    dtype = str(primals[0].dtype).replace("torch.", "")
    tolerance = rows.tolerances(dtype, rtol=request.rtol, atol=request.atol, eps=request.eps)
    with timings.phase("checks"):
        found = transforms.guarded(
            lambda: rows.run_checks(
                fn,
                primals,
                has_aux=request.has_aux,
                tolerance=tolerance,
                rng=problem.rng,
                directions=request.directions,
                full=request.full,
                names=problem.names,
                order=request.order,
                randomness="same" if problem.profile.random else "error",
                whole=whole,
                nondet_tol=request.nondet_tol,
            ),
            "check",
        )
    report = rows.Report(found, tolerance, dtype)
    plan.require_a_check(report)
    check_footer(timings, "check", problem, dtype, request)
    return CheckOutcome(report, timings)


def deliver_check(outcome: CheckOutcome, request: Request, text_stdout: IO[str]) -> None:
    from jaccli.io import outputs
    from jaccli.io.streams import write_text
    from jaccli.report.record import for_output
    from jaccli.report.render import render_checks

    fmt = output_format(request)
    doc = outcome.report.as_dict()
    with outcome.timings.phase("write"):
        record = for_output(request, outcome.timings, fmt)
        doc = {**doc, "record": record} if record else doc
        if request.out is not None and request.out != "-":
            outputs.atomic_write(request.out, lambda fh: fh.write(outputs.dump_document(doc, fmt).encode()))
        elif fmt == "text":
            render_checks(text_stdout, outcome.report)
        else:
            write_text(text_stdout, outputs.dump_document(doc, fmt))
    write_timings(outcome.timings, request)
