"""Stage 3, the result: the derivative computed as planned, and timed.

At once or in chunks, the router (:class:`jaccli.autodiff.routing.Router`) makes the first call,
falling back route by route; then the steady-state runs (compiled under ``--compile``) and the
function alone. A streamed plan writes its one Jacobian block into ``-o J.npy`` a chunk at a
time (sharded over ranks under torchrun) and is timed once: each repeat would rewrite the file.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from jaccli.pipeline.plan import MODE_NAMES, Plan
from jaccli.pipeline.problem import Problem
from jaccli.pipeline.request import Request


@dataclass
class Result:
    """The derivative on the device, as a tree keyed like torch.func's return, and how it ran."""

    tree: Any  # None when streamed
    engine: str  # the route that answered, for the footer
    mode_note: str | None  # jacobian: which mode answered, and why
    streamed: Any = None  # a jaccli.scale.streaming report: the result is in its file already


def compute(request: Request, problem: Problem, plan: Plan) -> Result:
    """The first call, the steady state and the function alone (see the module's docstring)."""
    from jaccli.autodiff.routing import Router
    from jaccli.autodiff.trust import finite, profile_note
    from jaccli.scale import memory

    if plan.memory.how == memory.STREAMED:
        return _stream(request, problem, plan)
    timings, routes = problem.timings, plan.routes
    options = {
        "tangents": problem.tangents,
        "cotangents": problem.cotangents,
        "argnums": problem.argnums,
        "has_aux": request.has_aux,
        "chunk_size": request.chunk_size,
        "randomness": request.randomness,
    }
    note = profile_note(problem.profile)
    if note:  # in --timings files, not on stderr: nothing is wrong
        timings.footer["function"] = note
    if plan.memory.how == memory.CHUNKED:
        router = _chunked(request, problem, plan)
    else:
        router = Router(
            request.command,
            request.engine,
            problem.fn,
            problem.primals,
            options,
            batch_dim=request.batch_dim,
            commands=routes.commands,
            fallback_commands=routes.fallback,
            untaxed_first=routes.untaxed_first,
            loop_ok=routes.loop_ok,
            trial=routes.trial,
            sync=timings.sync,
            output_finite=finite(problem.output),
        )
    with timings.phase("first call"):
        tree = router()
    if plan.memory.how == memory.CHUNKED:
        timings.footer["memory"] = plan.memory.note()
    choice = _choice(router)
    timings.routes = dict(getattr(router, "timed", None) or {})  # for the record (report.record)
    if choice:
        timings.footer["choice"] = choice
    mode_note = _mode_note(request, routes.mode_note, router, bool(choice))
    timings.notes.extend(router.fallbacks)
    timings.remarks.extend(getattr(router, "remarks", []))
    steady, engine = router, router.label
    if request.compile:
        from jaccli.autodiff.compiled import compile_router

        steady, tree, engine = compile_router(router, tree, timings)
    first = timings.get("first call").times[0]
    timings.series("steady-state compute", steady, request.repeat, request.warmup, per_run_s=first)
    function_alone(request, problem, per_run_s=timings.get("function, first call").times[0])
    return Result(tree, engine, mode_note)


def function_alone(request: Request, problem: Problem, per_run_s: float | None = None) -> None:
    """The primal evaluation, timed as the steady state is (only if cheap: see report.timing);
    every derivative command's table has this row."""
    from jaccli.autodiff.routing import evaluate

    problem.timings.series(
        "function alone",
        lambda: evaluate(problem.fn, problem.primals, request.batch_dim, request.engine, request.randomness),
        request.repeat,
        request.warmup,
        per_run_s=per_run_s,
    )


def _mode_note(request: Request, planned: str | None, router: Any, trial: bool) -> str | None:
    """jacobian: the mode that answered and why (planned, the other one after a failure, or the
    trial's pick)."""
    if request.command != "jacobian":
        return planned
    answered = getattr(router, "chosen", None)
    if request.mode == "auto" and planned and answered:
        name = MODE_NAMES.get(answered[0].command, "reverse")
        if not planned.startswith(f"mode: {name}"):  # the planned mode failed
            return f"mode: {name} (--mode auto: the other mode failed here, see the note)"
    if planned is not None:
        return planned
    if answered is not None:  # --mode auto, decided by the trial
        name = MODE_NAMES[answered[0].command]
    else:  # chunked (scale.streaming.Chunked): the blocks' chunk routes say
        modes = {b.route.mode for b in router.blocks.values() if b.route is not None}
        name = " and ".join(sorted({"fwd": "forward", "rev": "reverse"}[m] for m in modes)) or "?"
    why = "the faster route timed on the first call" if trial else "the only mode that works here"
    return f"mode: {name} (--mode auto, {why})"


def _chunked(request: Request, problem: Problem, plan: Plan) -> Any:
    """The stand-in router computing every Jacobian block in chunks of ``plan.memory.chunk``
    passes."""
    from jaccli import trees
    from jaccli.scale.chunks import BlockJacobian
    from jaccli.scale.streaming import Chunked

    blocks = {
        key: BlockJacobian(problem.fn, problem.primals, info, request.has_aux, request.randomness)
        for key, info in plan.layout
        if info is not None
    }
    aux_leaves = dict(trees.leaves(problem.aux, "aux")) if request.has_aux else {}
    return Chunked(blocks, aux_leaves, request.engine, plan.memory.mode, plan.memory.chunk)


def _stream(request: Request, problem: Problem, plan: Plan) -> Result:
    """One Jacobian block straight into ``-o PATH.npy``, a chunk at a time (no repeats: each
    would recompute and rewrite the whole result), sharded over ranks under torchrun."""
    from jaccli.report.timing import Phase
    from jaccli.scale import distributed
    from jaccli.scale.chunks import BlockJacobian
    from jaccli.scale.streaming import to_file

    timings, block, memory = problem.timings, plan.streamable, plan.memory
    info = block.info
    shape = info.matrix_shape if request.flatten else (*info.output_shape, *info.input_shape)
    jacobian = BlockJacobian(problem.fn, problem.primals, info, request.has_aux, request.randomness)
    session = distributed.start(problem.device) if distributed.launched() else distributed.Single()
    try:
        report = to_file(
            jacobian,
            block.key,
            request.out,
            shape,
            request.engine,
            memory.mode,
            memory.chunk,
            session,
            timings.sync,
        )
    finally:
        session.close()
    timings.notes.extend(report.fallbacks)
    timings.phases.append(Phase("steady-state compute", [report.compute_s], is_series=True))
    function_alone(request, problem)
    timings.phases.append(Phase("write", [report.write_s]))
    ranks = f"; {session.world} ranks, the times are rank 0's share" if session.world > 1 else ""
    timings.footer["memory"] = (
        f"{memory.note(request.out)}; steady-state compute is that one run, not repeated{ranks}"
    )
    return Result(None, report.label, None, streamed=report)


def _choice(router: Any) -> str | None:
    """What a trial measured, for the timing table's footer."""
    from jaccli.report.render import duration

    if not getattr(router, "timed", None):  # only a Router's trial times routes
        return None
    return "fastest on the first call of " + ", ".join(f"{k} {duration(t)}" for k, t in router.timed.items())
