"""``jac jvp|vjp --directions K``: J.v for K tangents, or u^T.J for K cotangents, in one process.

Each tangent (cotangent) carries a leading axis of K directions: a file's leading axis must be
K, a generator draws K (``-t randn --directions 64``). The results ``jvp`` (``vjp.<i>``) lead
with that axis; ``output`` and ``aux`` are the function's, once.

How the K products are computed is data (``ROUTES``), tried in order, falling back (and saying
so) when torch.func cannot transform the function:

- vmap: ``torch.func.vmap`` over the transform (jvp, or vjp, whose forward pass is shared);
- linearize: ``torch.func.linearize`` once, its linear map vmapped over the directions (jvp only);
- loop: one transform per direction, torch.func, then torch.autograd as the last resort.

With ``--repeat`` (steady state matters) the routes marked ``trial`` are timed on the first
chunk and the fastest kept, as ``--mode auto`` does. When the K products and the work of
computing them at once would not fit in ``--max-memory`` (default: 80% of free memory), the
directions go in chunks, copied into results allocated once (a direction's work is counted as a
Jacobian's pass is in :mod:`jaccli.scale.memory`, measured where the count could be too low). When
the results themselves would not fit, the one written to
``-o R.npy`` (one result, or ``--select KEY``) is streamed: each chunk of directions is
computed and its slice of the leading axis written straight into the file (see
:mod:`jaccli.io.npyfile`: atomic, no file unless every chunk was written), never holding the
whole result; any other output is refused with one line before any work. The directions
themselves (the tangents or cotangents, K of them) are held in memory either way.
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass
from typing import Any

from jaccli import trees
from jaccli.errors import InputError, human_size


@dataclass(frozen=True)
class Route:
    name: str
    commands: tuple[str, ...]
    engine: str  # func or autograd
    batched_ok: bool  # works under --batch-dim
    aux_ok: bool  # works with --has-aux
    trial: bool  # timed against the other trial routes under --repeat


ROUTES = (
    Route("vmap", ("jvp", "vjp"), "func", True, True, True),
    Route("linearize", ("jvp",), "func", False, False, True),
    Route("loop", ("jvp", "vjp"), "func", True, True, False),
    Route("loop (torch.autograd)", ("jvp", "vjp"), "autograd", True, True, False),
)
TRIAL_RUNS = 3


def routes_for(command: str, engine: str, batched: bool, has_aux: bool) -> list[Route]:
    return [
        r
        for r in ROUTES
        if command in r.commands
        and engine in ("auto", r.engine)
        and (r.batched_ok or not batched)
        and (r.aux_ok or not has_aux)
    ]


def check_request(request: Any) -> None:
    """Options --directions cannot go with, before any work."""
    k = request.n_directions
    if request.command not in ("jvp", "vjp"):
        raise InputError(f"--directions is for jvp and vjp; {request.command} does not take it")
    if k < 1:
        raise InputError(f"--directions {k}: give 1 or more directions")
    if request.compile:
        raise InputError("--directions with --compile is not supported; use one or the other")
    if request.strict and request.batch_dim is not None:
        raise InputError("--directions with --strict and --batch-dim is not supported; drop --strict")


def leading_axis(sources: list, k: int, option: str) -> None:
    """Every array read for ``option`` must lead with K directions."""
    from jaccli.io.inputs import Generator

    for source in sources:
        if isinstance(source, Generator):
            if source.shape is not None:
                raise InputError(
                    f"{source.origin}: with --directions, a generator takes its shape from the "
                    f"{'primals' if option == '--tangents' else 'output'}: write {option} {source.kind}"
                )
            continue
        for array in source:
            shape = tuple(array.data.shape)
            if not shape or shape[0] != k:
                raise InputError(
                    f"{array.origin}: --directions {k} needs a leading axis of {k} directions; this "
                    f"array has shape {shape} (stack one {option.strip('-')[:-1]} per direction along axis 0)"
                )


def _expanded(tensor: Any, k: int) -> Any:
    return tensor.expand(k, *tensor.shape)


def run_directions(request: Any) -> Any:
    """The whole command (called by jaccli.pipeline.run): an Outcome keyed as plain jvp/vjp, K leading."""
    from jaccli.autodiff import modules, transforms
    from jaccli.io import arguments
    from jaccli.pipeline.compute import function_alone
    from jaccli.pipeline.delivery import footer, host_array
    from jaccli.pipeline.problem import disciplined, load
    from jaccli.pipeline.request import Outcome

    check_request(request)
    command, k, batch = request.command, request.n_directions, request.batch_dim
    setup = disciplined(load(request, ("jvp", "vjp")), request, batched=True)
    fn, primals, names, timings, rng = setup.fn, setup.primals, setup.names, setup.timings, setup.rng
    output, aux = setup.output, setup.aux
    option, short = ("--tangents", "-t") if command == "jvp" else ("--cotangents", "-u")
    sources = setup.tangent_sources if command == "jvp" else setup.cotangent_sources
    if not sources:
        raise InputError(
            f"--directions {k} needs {option}/{short}: a file whose arrays lead with {k} directions, "
            f"or a generator ({short} randn)"
        )
    leading_axis(sources, k, option)
    if command == "jvp":
        like = [_expanded(p, k) for p in primals]
        directions = arguments.tangent_tensors(sources, like, rng, names, "jvp")
    else:
        directions = arguments.cotangent_tree(
            sources, trees.map_leaves(lambda t: _expanded(t, k), output), rng
        )
    if request.strict:
        transforms.strict_check(fn, primals, tuple(range(len(primals))), request.has_aux)

    rename = (lambda key: modules.rename_key(key, command, names, 0)) if names else (lambda key: key)
    products = [
        rename(key) for key, _ in trees.leaves(output if command == "jvp" else tuple(primals), command)
    ]
    keys = [key for key, _ in trees.leaves(output, "output")] + products
    keys += [rename(key) for key, _ in trees.leaves(aux, "aux")] if request.has_aux else []
    if request.select is not None and request.select not in keys:
        raise InputError(f"--select {request.select!r}: no such result; the keys are {', '.join(keys)}")
    chosen = [request.select] if request.select else keys
    from jaccli.io.outputs import check_count
    from jaccli.pipeline.request import output_format

    check_count(output_format(request), chosen, f"-o {request.out}" if request.out else "--format npy")
    to_file = output_format(request) == "npy" and request.out not in (None, "-") and chosen[0] in products
    from jaccli.scale.memory import Probe

    sample = [p.select(batch, 0) for p in primals] if batch is not None else primals
    call_s = timings.get("function, first call").times[0]
    probe = Probe(fn, sample, tuple(range(len(primals))), request.has_aux, call_s, setup.device.type)
    plan = plan_directions(request, primals, output, k, to_file, products, probe)
    compute = Products(command, fn, primals, directions, request.has_aux, batch, plan.chunk)
    candidates = routes_for(command, request.engine, batch is not None, request.has_aux)
    if plan.streamed:
        return _stream(request, setup, compute, candidates, plan, chosen[0], rename)
    with timings.phase("first call"):
        tree = compute.first(candidates, trial=bool(request.repeat))
    _chose(timings, compute)
    if plan.chunk < k:
        timings.footer["memory"] = f"memory: computed in chunks of {plan.chunk} directions ({plan.why})"
    first = timings.get("first call").times[0]
    timings.series("steady-state compute", compute.run, request.repeat, request.warmup, per_run_s=first)
    function_alone(request, setup)
    with timings.phase("move to host"):
        whole = {"output": output, command: tree}
        if request.has_aux:
            whole["aux"] = aux
        flat = {rename(key): value for key, value in trees.leaves(whole)}
        if list(flat) != keys:  # predicted from the structures above: a bug in jac if not
            raise AssertionError(f"result keys {list(flat)} differ from the predicted {keys}")
        results, dtypes, notes = {}, {}, {}
        for key in chosen:
            results[key], dtypes[key] = host_array(flat[key], key)
            if key in products:
                notes[key] = f"a leading axis of {k} directions: one {command} per direction" + (
                    ", then the batch" if batch is not None else ""
                )
    footer(timings, command, f"{compute.label} over {k} directions", setup)
    return Outcome(results, notes, dtypes, timings)


def _chose(timings: Any, compute: Products) -> None:
    """The fallbacks and the trial's times, for the timing table."""
    timings.notes.extend(compute.fallbacks)
    timings.routes = dict(compute.timed or {})  # for the record (jaccli.report.record)
    if compute.timed:
        from jaccli.report.render import duration

        timings.footer["choice"] = "fastest on the first chunk of " + ", ".join(
            f"{name} {duration(t)}" for name, t in compute.timed.items()
        )


@dataclass(frozen=True)
class Plan:
    chunk: int  # directions per chunk (K: all at once)
    streamed: bool = False  # the one result written to -o R.npy a chunk at a time
    why: str = ""  # for the timing table: the sizes that decided


def plan_directions(
    request: Any,
    primals: list,
    output: Any,
    k: int,
    streamable: bool,
    products: list[str],
    probe: Any = None,
) -> Plan:
    """Directions per chunk so that the results and the work in flight fit in memory; streamed
    into ``-o R.npy`` when the results alone would not (``streamable``), else an input error.

    The work of a direction is counted as for a Jacobian's pass (:mod:`jaccli.scale.memory`): 2 x
    (input + output elements), or where that could be too low to matter, one pass measured by
    ``probe`` (a :class:`jaccli.scale.memory.Probe` over one sample: forward mode for jvp, reverse
    for vjp), times the samples under --batch-dim."""
    from jaccli.scale.memory import allowed_bytes

    itemsize = max([p.element_size() for p in primals] + [t.element_size() for _, t in trees.leaves(output)])
    n_in = sum(p.numel() for p in primals)
    n_out = sum(t.numel() for _, t in trees.leaves(output))
    per_direction = (n_out if request.command == "jvp" else n_in) * itemsize
    work = 2 * (n_in + n_out) * itemsize
    allowed = allowed_bytes(request.max_memory)
    where = "--max-memory" if request.max_memory is not None else "80% of the memory free now"
    result = k * per_direction
    once, measured = 0, ""
    found = None
    if probe is not None:
        mode = "fwd" if request.command == "jvp" else "rev"
        found = probe.measure(mode, k, allowed - result - k * work)
    if found is not None:
        samples = 1 if request.batch_dim is None else primals[0].shape[request.batch_dim]
        once = found.once * samples  # the evaluation's graph, held while the directions run
        # a direction: its products, before they are copied into the results, and the pass
        if per_direction + found.per_pass * samples > work:
            work = per_direction + found.per_pass * samples
            measured = f", a direction's work {human_size(work)} (measured)"
    if result + once + work > allowed and streamable:
        # in flight per direction: its products, their copy on the way to the file, and the work
        chunk = max(1, min(k, (allowed - once) // (2 * per_direction + work)))
        why = f"the results take {human_size(result)}; {where} is {human_size(allowed)}{measured}"
        return Plan(chunk, True, why)
    if result > allowed:
        raise InputError(
            f"--directions {k}: the {request.command} results would take {human_size(result)}, more "
            f"than {where} ({human_size(allowed)}); write one straight to disk, a chunk at a time, with "
            f"-o R.npy --select KEY (KEY: {', '.join(products)}), ask for fewer directions per run, or "
            "raise --max-memory"
        )
    if result + once + k * work <= allowed:
        return Plan(k)
    chunk = max(1, int((allowed - result - once) // work))  # one at a time if need be
    why = f"{chunk} of {k} directions at a time fit in memory{measured}"
    return Plan(chunk, False, why)


def _stream(
    request: Any, setup: Any, compute: Products, candidates: list, plan: Plan, key: str, rename: Any
) -> Any:
    """The one result ``key`` computed a chunk of directions at a time, each chunk's slice written
    straight into ``-o R.npy`` (no repeats: each would recompute and rewrite the whole result)."""
    import numpy as np

    from jaccli.io.npyfile import NpyWriter, check_room
    from jaccli.pipeline.compute import function_alone
    from jaccli.pipeline.delivery import footer, host_array
    from jaccli.pipeline.request import Outcome
    from jaccli.report import progress
    from jaccli.report.timing import Phase
    from jaccli.scale.streaming import Streamed

    timings, command, k, chunk = setup.timings, request.command, compute.k, plan.chunk

    def part(tree: Any) -> Any:
        return {rename(name): leaf for name, leaf in trees.leaves(tree, command)}[key]

    with timings.phase("first call"):  # the route, chosen on one direction
        head = part(compute.first(candidates, trial=bool(request.repeat), stop=1))
    _chose(timings, compute)
    sample, dtype = host_array(head[:0], key)
    shape = (k, *head.shape[1:])
    check_room(request.out, math.prod(shape) * sample.dtype.itemsize)
    report = Streamed(key, request.out, shape, dtype, label=f"{compute.label} over {k} directions")
    report.fallbacks = compute.fallbacks
    writer = NpyWriter(request.out, shape, math.prod(shape[1:]), sample.dtype)
    nan = inf = 0
    try:
        with progress.bar(f"{key} -> {request.out}", k if chunk < k else 0) as shown:
            for lo in range(0, k, chunk):
                hi = min(lo + chunk, k)
                began = time.perf_counter()
                block, _ = host_array(part(compute.chunk_of(lo, hi)), key)
                timings.sync()
                middle = time.perf_counter()
                if block.dtype.kind in "fc":
                    nan += int(np.isnan(block).sum())
                    inf += int(np.isinf(block).sum())
                writer.write(lo, 0, block.reshape(hi - lo, math.prod(shape[1:])))
                report.compute_s += middle - began
                report.write_s += time.perf_counter() - middle
                report.chunks += 1
                shown.advance(hi - lo)
        began = time.perf_counter()
        writer.commit()
        report.write_s += time.perf_counter() - began
    except BaseException:  # an error, Ctrl-C: no file, and the old one kept
        writer.discard()
        raise
    report.non_finite = (nan, inf)
    timings.phases.append(Phase("steady-state compute", [report.compute_s], is_series=True))
    function_alone(request, setup)
    timings.phases.append(Phase("write", [report.write_s]))
    timings.footer["memory"] = (
        f"memory: streamed to {request.out} in chunks of {chunk} directions ({plan.why}); "
        "steady-state compute is that one run, not repeated"
    )
    getattr(setup.fn, "restore_state", lambda: None)()
    footer(timings, command, report.label, setup)
    return Outcome({}, {}, {key: dtype}, timings, streamed=report)


class Products:
    """The K products by one route, chunk by chunk; ``first`` chooses the route."""

    def __init__(self, command, fn, primals, directions, has_aux, batch, chunk) -> None:  # noqa: ANN001
        self.command, self.fn, self.primals = command, fn, list(primals)
        self.directions, self.has_aux, self.batch, self.chunk = directions, has_aux, batch, chunk
        self.k = trees.leaves(directions)[0][1].shape[0]
        self.route: Route | None = None
        self.fallbacks: list[str] = []
        self.timed: dict[str, float] = {}

    @property
    def label(self) -> str:
        route = self.route.name if self.route else "?"
        autograd = self.route is not None and self.route.engine == "autograd"
        engine = "torch.autograd" if autograd else "torch.func"
        return route if engine in route else f"{route} ({engine})"

    def first(self, candidates: list[Route], trial: bool, stop: int | None = None) -> Any:
        """The products of directions ``[0:stop]`` (default: all) by the first route that works,
        or under ``trial`` the fastest of those that do (timed on the first chunk)."""
        from jaccli.autodiff.transforms import failure_reason, guarded

        working: list[tuple[Route, Any, float]] = []
        failures = []
        for route in candidates:
            if working and not (trial and route.trial and working[0][0].trial):
                break
            try:
                start = time.perf_counter()
                tree = self._run(route, stop)
                elapsed = time.perf_counter() - start
            except Exception as exc:
                reason = failure_reason(exc)
                if reason is None or route is candidates[-1]:
                    if working:
                        break
                    guarded(lambda exc=exc: _reraise(exc), self.command)
                failures.append(f"{route.name}: {reason}")
                continue
            working.append((route, tree, elapsed))
        if failures:
            self.fallbacks.append(
                f"--directions: {', '.join(failures)} could not run; fell back to {working[0][0].name}"
            )
        if len(working) > 1:
            for route, _, _ in working:
                self.timed[route.name] = self._time(route)
            best = min(working, key=lambda w: self.timed[w[0].name])
            self.route = best[0]
            return best[1]
        self.route = working[0][0]
        return working[0][1]

    def _time(self, route: Route) -> float:
        times = []
        for _ in range(TRIAL_RUNS):
            start = time.perf_counter()
            self._chunk(route, 0, self.chunk)
            times.append(time.perf_counter() - start)
        return statistics.median(times)

    def run(self) -> Any:
        from jaccli.autodiff.transforms import guarded

        return guarded(lambda: self._run(self.route), self.command)

    def chunk_of(self, start: int, stop: int) -> Any:
        """The products of directions ``[start:stop]`` by the chosen route."""
        from jaccli.autodiff.transforms import guarded

        return guarded(lambda: self._chunk(self.route, start, stop), self.command)

    def _run(self, route: Route, stop: int | None = None) -> Any:
        """Directions ``[0:stop]``, a chunk at a time into preallocated results (no concatenation:
        the peak is the results plus one chunk)."""
        from jaccli.report import progress

        stop = self.k if stop is None else stop
        if self.chunk >= stop:
            return self._chunk(route, 0, stop)
        skeleton, whole = None, None
        with progress.bar(f"{self.command} (chunks of directions)", stop) as shown:
            for start in range(0, stop, self.chunk):
                end = min(start + self.chunk, stop)
                part = self._chunk(route, start, end)
                leaves = [leaf for _, leaf in trees.leaves(part)]
                if whole is None:
                    skeleton = trees.map_leaves(lambda _: None, part)  # the structure alone
                    whole = [t.new_empty((stop, *t.shape[1:])) for t in leaves]
                for target, leaf in zip(whole, leaves):
                    target[start:end] = leaf
                del part, leaves
                shown.advance(end - start)
        return trees.unflatten(skeleton, whole)

    def _slice(self, start: int, stop: int) -> Any:
        return trees.map_leaves(lambda t: t[start:stop], self.directions)

    def _chunk(self, route: Route, start: int, stop: int) -> Any:
        import torch
        import torch.func as tf

        block = self._slice(start, stop)
        if route.name == "vmap":
            if self.command == "jvp":
                return tf.vmap(lambda *d: self._one(list(d), "func"))(*block)
            return tf.vmap(lambda d: self._one(d, "func"))(block)
        if route.name == "linearize":
            _, jvp_fn = tf.linearize(self.fn, *self.primals)
            return tf.vmap(jvp_fn)(*block)
        engine = route.engine
        count = stop - start
        if self.command == "jvp":
            each = [self._one([t[i] for t in block], engine) for i in range(count)]
        else:
            each = [self._one(trees.map_leaves(lambda t, i=i: t[i], block), engine) for i in range(count)]
        stacked = [
            torch.stack([dict(trees.leaves(e))[key] for e in each]) for key, _ in trees.leaves(each[0])
        ]
        return trees.unflatten(each[0], stacked)

    def _one(self, direction: Any, engine: str) -> Any:
        """The product along one direction (per sample under --batch-dim)."""
        from jaccli.autodiff.routing import per_sample
        from jaccli.autodiff.transforms import compute_raw

        option = "tangents" if self.command == "jvp" else "cotangents"

        def one(*primals: Any, **given: Any) -> Any:
            return compute_raw(self.command, self.fn, primals, has_aux=self.has_aux, engine=engine, **given)

        if self.batch is None:
            got = one(*self.primals, **{option: direction})
        else:
            got = per_sample(one, self.primals, {option: direction}, self.batch, loop=engine == "autograd")
        return got[self.command]


def _reraise(exc: BaseException) -> Any:
    raise exc
