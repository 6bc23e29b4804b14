"""Stage 2, the plan: which routes may answer, in which mode, under what memory, with which keys.

Decided from the problem's shapes and the first call's time, before any derivative runs:

- routes (:func:`routes`): the command, or both modes for ``jac jacobian --mode auto``; whether a
  one-shot run avoids torch.func's import, whether ``--repeat`` runs time a trial of routes;
- keys (:func:`jaccli.autodiff.transforms.layout`): the contract's name of every result, renamed
  by parameter under ``--wrt params``; ``--select``, ``--plot`` and the output format checked
  against them;
- memory (:mod:`jaccli.scale.memory`): at once, in chunks, or streamed into ``-o J.npy``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, Callable

from jaccli import trees
from jaccli.errors import InputError
from jaccli.pipeline.problem import Problem, argnum_tuple
from jaccli.pipeline.request import Request, output_format

# The first use of torch.func in a process costs about this much: it imports torch._dynamo (and
# forward-mode AD scripts its decompositions). Measured at 1.1-1.6 s on a 2-core CPU, next to
# ~1.4 s for `import torch` itself. One-shot runs avoid it when plain reverse mode is cheaper.
IMPORT_TAX_S = 1.0
PASS_COST = 2.0  # one reverse pass of a loop costs about this many calls of the function
FREE_ROUTES = ("jvp", "vjp", "jacrev", "jacobian", "hvp")  # commands whose route jac may choose
MODE_NAMES = {"jacfwd": "forward", "jacrev": "reverse", "jacrev-batched": "reverse"}


@dataclass
class Routes:
    """How ``--engine`` and ``--mode`` become routes: see :class:`jaccli.autodiff.routing.Router`."""

    commands: tuple[str, ...]  # what may answer: the command, or jacrev and jacfwd for --mode auto
    mode_note: str | None
    untaxed_first: bool  # a one-shot run of --engine auto: avoid routes that import heavily
    loop_ok: bool  # a loop of passes (one per output element) costs less than that import
    trial: bool  # time every route that works and keep the fastest
    fallback: tuple[str, ...] = ()  # jacobian: the other mode, tried only when this one fails


@dataclass
class Plan:
    """Everything decided before the derivative runs."""

    routes: Routes
    layout: list  # (key, JacobianInfo or None) per result, as transforms.layout gives them
    rename: Callable[[str], str]  # a key as the user sees it (parameter names under --wrt params)
    keys: list[str]  # every result's key, renamed
    chosen: list[str]  # the keys written: --select's, else all
    axes: dict  # per Jacobian or Hessian key: report.pictures.Axes
    memory: Any  # a jaccli.scale.memory.Plan: at once, chunked or streamed
    streamable: Any  # the block a stream would write (a memory.Block keyed as in the results)


def make(request: Request, problem: Problem) -> Plan:
    """Routes, keys and memory for ``problem`` (see the module's docstring)."""
    from jaccli.autodiff import modules, transforms
    from jaccli.io.outputs import check_count
    from jaccli.report.pictures import matrix_axes

    chosen_routes = routes(request, problem)
    layout = transforms.layout(
        chosen_routes.commands[0],
        problem.sample_output,
        problem.sample_primals,
        problem.argnums,
        problem.aux,
        request.has_aux,
    )
    names, argnums = problem.names, problem.argnums
    rename = (lambda k: modules.rename_key(k, request.command, names, argnums)) if names else (lambda k: k)
    keys = [rename(k) for k, _ in layout]
    if request.select is not None and request.select not in keys:
        raise InputError(f"--select {request.select!r}: no such result; the keys are {', '.join(keys)}")
    chosen = [request.select] if request.select else keys
    axes = matrix_axes(layout, rename, problem.sample_primals, argnums, names)
    if request.plot is not None and not any(math.prod(axes[k].shape) for k in chosen if k in axes):
        kept = f"--select {request.select} keeps" if request.select else "the results hold"
        raise InputError(f"--plot {request.plot}: {kept} no non-empty Jacobian; nothing to draw")
    check_count(output_format(request), chosen, f"-o {request.out}" if request.out else "--format npy")
    memory, streamable = _memory(request, problem, chosen_routes.commands[0], layout, rename, chosen)
    return Plan(chosen_routes, layout, rename, keys, chosen, axes, memory, streamable)


def routes(request: Request, problem: Problem) -> Routes:
    """One-shot runs (no --repeat) take the route that is fastest end to end, which for small
    problems means not loading torch.func; runs with --repeat time the routes and keep the
    fastest per call (see docs/engines.md, "Which engine runs")."""
    from jaccli.autodiff.routing import ROUTES, TRIAL_BUDGET_S
    from jaccli.autodiff.transforms import choose_mode, worth_a_trial

    command, batch = request.command, request.batch_dim
    n_in = sum(problem.sample_primals[a].numel() for a in argnum_tuple(problem.argnums))
    n_out = sum(t.numel() for _, t in trees.leaves(problem.sample_output))
    call_time = problem.timings.get("function, first call").times[0]
    passes = n_out if command in ("jacrev", "jacobian") else 1
    routed = ("jacrev", "jacfwd") if command == "jacobian" else (command,)
    has_loop = any(route.loop for c in routed for route in ROUTES[c])  # else no need to estimate
    loop_ok = has_loop and _loop_ok(
        n_in if command == "hessian" else n_out, call_time, problem.fn, problem.primals, batch
    )
    # Only where every route computes what the command names: jacfwd, hessian and --mode fwd
    # keep forward mode (and its result dtypes), --randomness different (vmap's) keeps torch.func.
    free = command in FREE_ROUTES and request.mode != "fwd" and request.randomness != "different"
    free = free and not request.compile  # --compile traces torch.func's transforms: they go first
    auto = request.engine == "auto" and batch is None and free
    untaxed_first = auto and not request.repeat  # --repeat 0 is one-shot too
    trial = auto and bool(request.repeat) and passes * PASS_COST * call_time <= TRIAL_BUDGET_S
    if command != "jacobian":
        return Routes((command,), None, untaxed_first, loop_ok, trial)
    if request.mode != "auto":
        routed = "jacfwd" if request.mode == "fwd" else "jacrev"
        note = f"mode: {MODE_NAMES[routed]} (--mode {request.mode})"
        return Routes((routed,), note, untaxed_first, loop_ok, trial)
    if untaxed_first and loop_ok:
        why = f"--mode auto, one-shot: {n_out} reverse passes cost less than loading torch.func"
        return Routes(("jacrev",), f"mode: reverse ({why})", True, True, False)
    if worth_a_trial(n_in, n_out, call_time):
        return Routes(("jacrev", "jacfwd"), None, untaxed_first, loop_ok, True)
    picked, why = choose_mode(n_in, n_out)
    routed = "jacfwd" if picked == "fwd" else "jacrev"
    reverse = routed == "jacrev"  # forward mode has one route of its own: nothing to choose
    note = f"mode: {MODE_NAMES[routed]} (--mode auto: {why})"
    other = "jacrev" if routed == "jacfwd" else "jacfwd"  # tried only when this mode fails
    return Routes((routed,), note, untaxed_first and reverse, loop_ok, trial and reverse, (other,))


def _loop_ok(passes: int, call_time: float, fn, primals, batch: int | None) -> bool:
    """Whether a loop of ``passes`` reverse passes costs less than torch.func's first use. A
    first call carries one-off costs, so a borderline case times a second call."""
    if passes * PASS_COST * call_time < IMPORT_TAX_S:
        return True
    if batch is not None or passes * PASS_COST * 1e-5 >= IMPORT_TAX_S:
        return False  # too many passes even at 10 us a call
    import time

    start = time.perf_counter()
    fn(*primals)
    return passes * PASS_COST * (time.perf_counter() - start) < IMPORT_TAX_S


def _memory(request: Request, problem: Problem, routed: str, layout, rename, chosen) -> tuple:
    """At once, in chunks or streamed (see :mod:`jaccli.scale.memory`), and the block a stream
    would write (named by its key in the results)."""
    from jaccli.scale import distributed, memory

    batch, primals = request.batch_dim, problem.primals
    samples = primals[0].shape[batch] if batch is not None else 1
    found = memory.blocks(layout, problem.sample_primals, problem.argnums, samples)
    streamable = None
    if output_format(request) == "npy" and request.out not in (None, "-") and batch is None:
        streamable = next((b for b in found if b.info is not None and rename(b.key) == chosen[0]), None)
        streamable = replace(streamable, key=chosen[0]) if streamable else None
    leaves = trees.leaves(problem.output)
    itemsize = max([primals[0].element_size()] + [t.element_size() for _, t in leaves])
    mode = "fwd" if routed == "jacfwd" else "rev"
    requested = {"jacfwd": "fwd", "jacrev": "rev"}.get(request.command, request.mode)
    call_s = problem.timings.get("function, first call").times[0]
    probe = memory.Probe(problem.fn, primals, problem.argnums, request.has_aux, call_s, problem.device.type)
    plan = memory.plan(
        request.command,
        found,
        itemsize,
        mode,
        request.max_memory,
        request.chunk_size,
        streamable,
        stream_as=requested,
        distributed=distributed.launched(),
        probe=probe,
    )
    if plan.how == memory.STREAMED and distributed.rank() == 0:
        from jaccli.io.npyfile import check_room

        check_room(request.out, math.prod(streamable.shape) * itemsize)
    return plan, streamable
