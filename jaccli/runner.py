"""One command from start to finish: a :class:`Request` in, an :class:`Outcome` out.

This is the library behind the CLI and needs no click::

    >>> from jaccli import Request, run
    >>> outcome = run(Request("jacrev", "examples/mlp.py:model()", primals=["randn:4"]))
    >>> outcome.results["jacobian"].shape
    (2, 4)

Order of work, so that bad input fails before anything costly or irreversible: check the
output destinations, load the function, read the inputs, move them to the device, evaluate
the function once (its output's structure fixes the result keys and the cotangents), then the
first call of the transform, the steady-state runs, the function alone, and back to the host.
"""

from __future__ import annotations

import contextlib
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import IO, Any, BinaryIO, Callable, Union

from jaccli import trees
from jaccli.errors import InputError
from jaccli.streams import UserStdout
from jaccli.timing import Timings

TIMINGS_FORMATS = ("json", "yaml")
SourceLike = Union[str, Any]  # an option value ("x.npy", "randn:3", "[1, 2]") or an array/tensor


@dataclass
class Request:
    """Everything one command needs; field names follow the command-line options."""

    command: str  # jvp, vjp, jacfwd, jacrev, jacobian, hessian, hvp
    func: str | Callable[..., Any]  # "mod:name" or a callable
    primals: Sequence[SourceLike] = ()
    tangents: Sequence[SourceLike] = ()
    cotangents: Sequence[SourceLike] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    argnums: int | tuple[int, ...] = 0
    has_aux: bool = False
    chunk_size: int | None = None
    randomness: str = "same"  # every evaluation runs on one seeded stream (README, "Randomness")
    strict: bool = False
    dtype: str | None = None
    device: str = "cpu"
    seed: int = 0
    flatten: bool = False
    select: str | None = None
    out: str | None = None  # a path, or "-" for standard output
    format: str = "text"  # what standard output gets when out is None or "-"
    engine: str = "auto"  # auto, func, autograd
    mode: str = "auto"  # jacobian: auto, fwd, rev
    batch_dim: int | None = None
    compile: bool = False  # trace the transform once and compile it with TorchInductor (jaccli.compiled)
    wrt: str = "inputs"  # inputs, params
    state: str | None = None  # parameters for an nn.Module FUNC: .pt (weights only) or .npz
    max_memory: int | None = None  # bytes the results may take (None: 80% of what is free)
    timings_path: str | None = None
    plot: str | None = None  # jacobian, jacfwd, jacrev, hessian: a heatmap image (.png, .svg, .pdf)
    full: bool = False  # check: the whole Jacobian by finite differences, column by column
    rtol: float | None = None  # check: tolerances (defaults: torch.autograd.gradcheck's)
    atol: float | None = None
    eps: float | None = None
    directions: int = 3  # check: random directions for the adjoint and finite differences
    order: int = 1  # check: 2 also checks second derivatives
    nondet_tol: float = 0.0  # check: how far two evaluations at the same point may differ
    repeat: int | None = None  # None: automatic (see timing.series)
    warmup: int | None = None
    stdin: BinaryIO | None = None
    n_directions: int | None = None  # jvp, vjp --directions K: inputs and results lead with K directions
    top: int | None = None  # spectrum: how many values (None: 6, fewer for a J with fewer)
    which: str = "largest"  # spectrum: largest or smallest
    eig: bool = False  # spectrum: eigenvalues of a square J instead of singular values
    hessian: bool = False  # spectrum: eigenvalues of the Hessian (eigsh over H.v)
    by: str = "magnitude"  # spectrum: eigenvalues ordered by magnitude or real part
    rank_tol: float | None = None  # spectrum: numerical rank counts values above rank_tol * s_max
    tol: float | None = None  # spectrum: ARPACK's relative accuracy (None: machine precision)
    sparse: bool = False  # jacobian, jacfwd, jacrev, hessian, check: a scipy.sparse result (jaccli.sparse)
    sparsity: str | None = None  # a pattern file to use instead of detecting one (implies sparse)


@dataclass
class Outcome:
    """Results on the host as numpy arrays, keyed as the contract names them."""

    results: dict[str, Any]
    notes: dict[str, str]  # per key: what a Jacobian's shape means
    dtypes: dict[str, str]  # per key: the torch dtype computed in (bfloat16 is written as float32)
    timings: Timings
    axes: dict[str, Any] = field(default_factory=dict)  # per Jacobian or Hessian key: pictures.Axes
    streamed: Any = None  # a jaccli.streaming.Streamed: the result went to its file while computed
    sparse: Any = None  # a jaccli.sparse.files.SparseResult (--sparse): deliver writes it


def output_format(request: Request) -> str:
    if request.out is not None and request.out != "-":
        from jaccli.outputs import format_for_path

        return format_for_path(request.out)
    return request.format


def check_request(request: Request, stdout: BinaryIO | None = None) -> None:
    """Checks that need no function and no data: destinations, formats."""
    from jaccli import outputs

    fmt = output_format(request)
    if fmt not in outputs.FORMATS:
        raise InputError(f"--format {fmt!r}: use one of {', '.join(outputs.FORMATS)}")
    if request.out is not None and request.out != "-":
        outputs.check_destination(request.out)
    elif stdout is not None:
        outputs.check_stream(stdout, fmt)
    if request.timings_path is not None:
        outputs.format_for_path(request.timings_path, "--timings", TIMINGS_FORMATS)
        outputs.check_destination(request.timings_path, "--timings")
    outputs.check_distinct(
        {"-o/--out": request.out, "--timings": request.timings_path, "--plot": request.plot}
    )
    if request.chunk_size is not None and request.chunk_size < 1:
        raise InputError(f"--chunk-size {request.chunk_size}: must be 1 or more")
    if request.plot is not None:
        from jaccli.pictures import check_plot

        check_plot(request.plot, request.command, request.batch_dim)


def run(request: Request, stdout: BinaryIO | None = None) -> Outcome:
    """Compute what ``request`` asks; nothing is written (see :func:`deliver`)."""
    check_request(request, stdout)
    from jaccli import distributed

    if distributed.launched() and request.command not in ("jacfwd", "jacrev", "jacobian"):
        raise InputError(
            f"jac {request.command} does not run under torchrun; torchrun shards jacfwd, jacrev and "
            "jacobian written with -o J.npy"
        )
    # The user's code may print: keep standard output for results alone.
    with contextlib.redirect_stdout(UserStdout(sys.stderr)):
        if request.sparse or request.sparsity:
            from jaccli.sparse.command import run_sparse

            return run_sparse(request)
        return _run(request)


@dataclass
class Setup:
    """What every command works on, once loaded, read and placed on the device."""

    fn: Callable[..., Any]  # the function to differentiate, keyword arguments bound
    primals: list  # what is differentiated: the -p inputs, or the parameters (--wrt params)
    names: list[str] | None  # parameter names under --wrt params
    argnums: Any
    tangents: list | None
    cotangent_sources: list
    device: Any
    timings: Timings
    rng: Any
    tangent_sources: list = field(default_factory=list)  # as read, for --directions (linalg.directions)
    state: list = field(default_factory=list)  # tensors fn reads but is not given (jaccli.trust)
    profile: Any = None  # what the first call showed (jaccli.calls.Profile), once _disciplined ran


def _setup(request: Request, commands: tuple[str, ...]) -> Setup:
    """Load the function, read the inputs, move them to the device: the first three phases."""
    import numpy as np

    from jaccli import arguments, transforms
    from jaccli.devices import place_module, resolve_device, synchronizer
    from jaccli.distributed import local_device
    from jaccli.inputs import Stdin
    from jaccli.loading import check_call, load_function
    from jaccli.routing import ENGINES

    _check_options(request, commands, ENGINES)
    device = resolve_device(local_device(request.device))
    timings = Timings(sync=synchronizer(device))
    rng = np.random.default_rng(request.seed)
    stdin = Stdin(request.stdin)

    with timings.phase("load function"):
        func = load_function(request.func) if isinstance(request.func, str) else request.func
        name = request.func if isinstance(request.func, str) else getattr(func, "__name__", "the function")
        module = None
        if request.wrt == "params" or request.state:
            from jaccli import modules

            module = modules.as_module(func, "--wrt params" if request.wrt == "params" else "--state")
            if request.state:
                modules.load_state(module, request.state)
    with timings.phase("read inputs"):
        inputs = arguments.primal_tensors(_sources(request.primals, "--primals", stdin), request.dtype, rng)
        check_call(func, len(inputs), request.kwargs, str(name))
        tangent_sources = _sources(request.tangents, "--tangents", stdin)
        cotangent_sources = _sources(request.cotangents, "--cotangents", stdin)
        if request.batch_dim is not None:
            _check_batch(inputs, request.batch_dim)
    with timings.phase("move to device"):
        place_module(func, device, request.dtype)
        inputs = [p.to(device) for p in inputs]

    fn = transforms.bind(func, request.kwargs)
    names = None
    if request.wrt == "params":
        fn, primals, names = modules.over_parameters(module, inputs, request.kwargs)
    else:
        primals = inputs
    argnums = request.argnums
    if names is not None and argnums == 0:
        argnums = tuple(range(len(primals)))  # every parameter, keyed by name
    argnums = transforms.normalize_argnums(argnums, len(primals))
    tangents = None
    if request.command in ("jvp", "hvp") and request.n_directions is None:
        tangents = arguments.tangent_tensors(
            tangent_sources, primals, rng, names, request.command, request.batch_dim
        )
    from jaccli.trust import state_of

    state = state_of(module, inputs if names is not None else ())
    return Setup(
        fn, primals, names, argnums, tangents, cotangent_sources, device, timings, rng, tangent_sources, state
    )


def _disciplined(setup: Setup, request: Request) -> Setup:
    """``setup`` with its function profiled by one first call (jaccli.calls) and wrapped, so that
    every later call sees the inputs the user gave and the ``--seed``-ed random stream. For the
    commands that make their own first call without the router's (check, --directions,
    spectrum, --sparse); a plain function comes back unwrapped."""
    from jaccli import calls, transforms

    fn, primals, batch = setup.fn, setup.primals, request.batch_dim
    if batch is not None:  # the function sees one sample at a time
        primals = [p.select(batch, 0) for p in primals]
    with setup.timings.phase("function, first call"):
        _, how = transforms.guarded(
            lambda: calls.profile(fn, primals, request.seed, setup.state), "the function"
        )
    return replace(setup, fn=calls.disciplined(fn, how, request.seed, setup.state), profile=how)


def _run(request: Request) -> Outcome:
    from jaccli import arguments, memory, modules, transforms
    from jaccli.routing import Router, evaluate
    from jaccli.trust import finite, first_call, left_graph, profile_note, zero_note

    command = request.command
    if request.n_directions is not None:  # many tangents or cotangents at once: jaccli.linalg.directions
        from jaccli.linalg.directions import run_directions

        return run_directions(request)
    setup = _setup(request, transforms.COMMANDS)
    fn, primals, names, argnums = setup.fn, setup.primals, setup.names, setup.argnums
    tangents, timings, rng = setup.tangents, setup.timings, setup.rng
    batch = request.batch_dim
    with timings.phase("function, first call"):
        # profiled (jaccli.trust): from here on fn sees fresh inputs and a seeded random stream
        (output, aux), fn, how = first_call(
            fn,
            lambda g: transforms.call_function(
                lambda *p: evaluate(g, p, batch, request.engine, request.randomness), primals, request.has_aux
            ),
            request.seed,
            setup.state,
        )
        setup.fn = fn
    sample_output, sample_primals = _per_sample_shapes(output, primals, batch)
    if command in ("hessian", "hvp"):
        _check_scalar(command, sample_output)
    plan = _plan(request, fn, primals, sample_output, sample_primals, argnums, timings)
    routed, mode_note = plan.commands[0], plan.mode_note
    layout = transforms.layout(routed, sample_output, sample_primals, argnums, aux, request.has_aux)
    rename = (lambda k: modules.rename_key(k, command, names, argnums)) if names else (lambda k: k)
    keys = [rename(k) for k, _ in layout]
    if request.select is not None and request.select not in keys:
        raise InputError(f"--select {request.select!r}: no such result; the keys are {', '.join(keys)}")
    chosen = [request.select] if request.select else keys
    from jaccli.pictures import matrix_axes

    axes = matrix_axes(layout, rename, sample_primals, argnums, names)
    if request.plot is not None and not any(math.prod(axes[k].shape) for k in chosen if k in axes):
        kept = f"--select {request.select} keeps" if request.select else "the results hold"
        raise InputError(f"--plot {request.plot}: {kept} no non-empty Jacobian; nothing to draw")
    from jaccli.outputs import check_count

    check_count(output_format(request), chosen, f"-o {request.out}" if request.out else "--format npy")
    memory_plan, streamable = _plan_memory(
        request, setup, routed, layout, rename, chosen, sample_primals, output
    )
    cotangents = None
    if command == "vjp":
        cotangents = arguments.cotangent_tree(setup.cotangent_sources, output, rng, batched=batch is not None)
    if request.strict:
        wrt = tuple(range(len(primals))) if command in ("jvp", "vjp", "hvp") else _as_tuple(argnums)
        first = [p.select(batch, 0) for p in primals] if batch is not None else primals
        transforms.strict_check(fn, first, wrt, request.has_aux)

    if memory_plan.how == memory.STREAMED:
        return _stream(request, setup, memory_plan, streamable)

    options = {
        "tangents": tangents,
        "cotangents": cotangents,
        "argnums": argnums,
        "has_aux": request.has_aux,
        "chunk_size": request.chunk_size,
        "randomness": request.randomness,
    }
    if profile_note(how):  # in --timings files, not on stderr: nothing is wrong
        timings.footer["function"] = profile_note(how)
    router = Router(
        command,
        request.engine,
        fn,
        primals,
        options,
        batch_dim=batch,
        commands=plan.commands,
        fallback_commands=plan.fallback,
        untaxed_first=plan.untaxed_first,
        loop_ok=plan.loop_ok,
        trial=plan.trial,
        sync=timings.sync,
        output_finite=finite(output),
    )
    with timings.phase("first call"):
        if memory_plan.how == memory.CHUNKED:
            router = _chunked(request, setup, memory_plan, layout, aux)
            tree = router()
            timings.footer["memory"] = memory_plan.note()
        else:
            tree = router()
    choice = _choice(router)
    if choice:
        timings.footer["choice"] = choice
    if command == "jacobian" and request.mode == "auto" and mode_note and getattr(router, "chosen", None):
        chosen_mode = _MODE_NAMES.get(router.chosen[0].command, "reverse")
        if not mode_note.startswith(f"mode: {chosen_mode}"):  # the planned mode failed
            mode_note = f"mode: {chosen_mode} (--mode auto: the other mode failed here, see the note)"
    if mode_note is None and command == "jacobian":  # --mode auto, decided by the trial
        if getattr(router, "chosen", None) is not None:
            name = _MODE_NAMES[router.chosen[0].command]
        else:  # chunked (streaming.Chunked): the blocks' chunk routes say
            modes = {b.route.mode for b in router.blocks.values() if b.route is not None}
            name = " and ".join(sorted({"fwd": "forward", "rev": "reverse"}[m] for m in modes)) or "?"
        why = "the faster route timed on the first call" if choice else "the only mode that works here"
        mode_note = f"mode: {name} (--mode auto, {why})"
    timings.notes.extend(router.fallbacks)
    timings.remarks.extend(getattr(router, "remarks", []))
    steady, engine = router, router.label
    if request.compile:
        from jaccli.compiled import compile_router

        steady, tree, engine = compile_router(router, tree, timings)
    first = timings.get("first call").times[0]
    timings.series("steady-state compute", steady, request.repeat, request.warmup, per_run_s=first)
    timings.series(
        "function alone",
        lambda: evaluate(fn, primals, batch, request.engine, request.randomness),
        request.repeat,
        request.warmup,
        per_run_s=timings.get("function, first call").times[0],  # timed only if cheap (timing.py)
    )

    with timings.phase("move to host"):
        flat = {rename(k): v for k, v in trees.leaves(tree)}
        if list(flat) != keys:  # layout() and compute() must agree: a bug in jac if not
            raise AssertionError(f"result keys {list(flat)} differ from the layout {keys}")
        results, dtypes = {}, {}
        for key in chosen:
            results[key], dtypes[key] = _to_host(flat[key], key)
        if names is not None:
            layout = [
                (k, replace(i, input_label=f"parameter {names[i.input_index]}") if i else None)
                for k, i in layout
            ]
        notes = _notes(layout, rename, results, request.flatten, batch, mode_note)
        if zero_note(results) and batch is None and left_graph(fn, primals, request.has_aux):
            timings.remarks.append(zero_note(results))

    if mode_note:
        timings.footer["mode"] = mode_note
    getattr(fn, "restore_state", lambda: None)()  # a module's buffers as the user gave them
    _footer(timings, command, engine, setup)
    return Outcome(results, notes, dtypes, timings, {k: a for k, a in axes.items() if k in results})


def _footer(timings: Timings, command: str, engine: str, setup: Setup) -> None:
    import torch

    timings.footer.update(
        command=command,
        engine=engine,
        device=str(setup.device),
        dtype=str(setup.primals[0].dtype).replace("torch.", ""),
        torch=str(torch.__version__),
        cost_ratio=timings.ratio("steady-state compute", "function alone"),
    )


def _plan_memory(request, setup, routed, layout, rename, chosen, sample_primals, output) -> tuple:
    """At once, in chunks or streamed (see :mod:`jaccli.memory`), and the block a stream would write
    (named by its key in the results)."""
    from jaccli import distributed, memory

    batch, primals = request.batch_dim, setup.primals
    samples = primals[0].shape[batch] if batch is not None else 1
    found = memory.blocks(layout, sample_primals, setup.argnums, samples)
    streamable = None
    if output_format(request) == "npy" and request.out not in (None, "-") and batch is None:
        streamable = next((b for b in found if b.info is not None and rename(b.key) == chosen[0]), None)
        streamable = replace(streamable, key=chosen[0]) if streamable else None
    itemsize = max([primals[0].element_size()] + [t.element_size() for _, t in trees.leaves(output)])
    mode = "fwd" if routed == "jacfwd" else "rev"
    requested = {"jacfwd": "fwd", "jacrev": "rev"}.get(request.command, request.mode)
    call_s = setup.timings.get("function, first call").times[0]
    probe = memory.Probe(setup.fn, primals, setup.argnums, request.has_aux, call_s, setup.device.type)
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
        from jaccli.npyfile import check_room

        check_room(request.out, math.prod(streamable.shape) * itemsize)
    return plan, streamable


def _chunked(request: Request, setup: Setup, plan: Any, layout: list, aux: Any) -> Any:
    """The stand-in router computing every Jacobian block in chunks of ``plan.chunk`` passes."""
    from jaccli.chunks import BlockJacobian
    from jaccli.streaming import Chunked

    blocks = {
        key: BlockJacobian(setup.fn, setup.primals, info, request.has_aux, request.randomness)
        for key, info in layout
        if info is not None
    }
    aux_leaves = dict(trees.leaves(aux, "aux")) if request.has_aux else {}
    return Chunked(blocks, aux_leaves, request.engine, plan.mode, plan.chunk)


def _stream(request: Request, setup: Setup, plan: Any, block: Any) -> Outcome:
    """Compute one Jacobian block straight into ``-o PATH.npy``, a chunk at a time (no repeats:
    each would recompute and rewrite the whole result), sharded over ranks under torchrun."""
    from jaccli import distributed
    from jaccli.chunks import BlockJacobian
    from jaccli.routing import evaluate
    from jaccli.streaming import to_file
    from jaccli.timing import Phase

    timings, info = setup.timings, block.info
    shape = info.matrix_shape if request.flatten else (*info.output_shape, *info.input_shape)
    jacobian = BlockJacobian(setup.fn, setup.primals, info, request.has_aux, request.randomness)
    session = distributed.start(setup.device) if distributed.launched() else distributed.Single()
    try:
        report = to_file(
            jacobian,
            block.key,
            request.out,
            shape,
            request.engine,
            plan.mode,
            plan.chunk,
            session,
            timings.sync,
        )
    finally:
        session.close()
    timings.notes.extend(report.fallbacks)
    timings.phases.append(Phase("steady-state compute", [report.compute_s], is_series=True))
    timings.series(
        "function alone",
        lambda: evaluate(setup.fn, setup.primals, None, request.engine, request.randomness),
        request.repeat,
        request.warmup,
    )
    timings.phases.append(Phase("write", [report.write_s]))
    ranks = f"; {session.world} ranks, the times are rank 0's share" if session.world > 1 else ""
    timings.footer["memory"] = (
        f"{plan.note(request.out)}; steady-state compute is that one run, not repeated{ranks}"
    )
    getattr(setup.fn, "restore_state", lambda: None)()
    _footer(timings, request.command, report.label, setup)
    return Outcome({}, {}, {report.key: report.dtype}, timings, streamed=report)


def _check_options(request: Request, commands: tuple[str, ...], engines: tuple[str, ...]) -> None:
    command = request.command
    if command not in commands:
        raise InputError(f"unknown command {command!r}; use one of {', '.join(commands)}")
    if request.engine not in engines:
        raise InputError(f"--engine {request.engine!r}: use one of {', '.join(engines)}")
    if request.mode not in ("auto", "fwd", "rev"):
        raise InputError(f"--mode {request.mode!r}: use auto, fwd or rev")
    if request.wrt not in ("inputs", "params"):
        raise InputError(f"--wrt {request.wrt!r}: use inputs or params")
    if request.tangents and command not in ("jvp", "hvp"):
        raise InputError(f"--tangents is for jvp and hvp; {command} does not take it")
    if request.cotangents and command != "vjp":
        raise InputError(f"--cotangents is for vjp; {command} does not take it")
    if request.wrt == "params" and request.batch_dim is not None:
        raise InputError("--batch-dim with --wrt params is not supported; use one or the other")


def _check_batch(inputs: Sequence[Any], dim: int) -> None:
    sizes = set()
    for i, p in enumerate(inputs):
        if not -p.dim() <= dim < max(p.dim(), 1) or p.dim() == 0:
            raise InputError(
                f"--batch-dim {dim}: primal {i} has shape {tuple(p.shape)}, no dimension {dim} to batch over"
            )
        sizes.add(p.shape[dim])
    if len(sizes) > 1:
        raise InputError(f"--batch-dim {dim}: the primals have different batch sizes {sorted(sizes)}")


def _per_sample_shapes(output: Any, primals: Sequence[Any], batch: int | None) -> tuple[Any, list]:
    """What one sample looks like (shapes only, on the meta device) under --batch-dim."""
    if batch is None:
        return output, list(primals)
    import torch

    def drop(t: Any, dim: int) -> Any:
        shape = list(t.shape)
        del shape[dim]
        return torch.empty(shape, device="meta", dtype=t.dtype)

    return trees.map_leaves(lambda t: drop(t, 0), output), [drop(p, batch) for p in primals]


def _check_scalar(command: str, output: Any) -> None:
    import torch

    if not isinstance(output, torch.Tensor) or output.numel() != 1:
        shapes = ", ".join(f"{k or 'output'} {tuple(t.shape)}" for k, t in trees.leaves(output))
        raise InputError(
            f"jac {command} needs a function with a one-element output; this one gives {shapes}: "
            "reduce it (e.g. .sum()) or use jac jacobian"
        )


_MODE_NAMES = {"jacfwd": "forward", "jacrev": "reverse", "jacrev-batched": "reverse"}

# The first use of torch.func in a process costs about this much: it imports torch._dynamo (and
# forward-mode AD scripts its decompositions). Measured at 1.1-1.6 s on a 2-core CPU, next to
# ~1.4 s for `import torch` itself. One-shot runs avoid it when plain reverse mode is cheaper.
IMPORT_TAX_S = 1.0
PASS_COST = 2.0  # one reverse pass of a loop costs about this many calls of the function
FREE_ROUTES = ("jvp", "vjp", "jacrev", "jacobian", "hvp")  # commands whose route jac may choose


@dataclass
class Plan:
    """How ``--engine`` and ``--mode`` become routes: see :class:`jaccli.routing.Router`."""

    commands: tuple[str, ...]  # what may answer: the command, or jacrev and jacfwd for --mode auto
    mode_note: str | None
    untaxed_first: bool  # a one-shot run of --engine auto: avoid routes that import heavily
    loop_ok: bool  # a loop of passes (one per output element) costs less than that import
    trial: bool  # time every route that works and keep the fastest
    fallback: tuple[str, ...] = ()  # jacobian: the other mode, tried only when this one fails


def _plan(request: Request, fn, primals, sample_output, sample_primals, argnums, timings) -> Plan:
    """One-shot runs (no --repeat) take the route that is fastest end to end, which for small
    problems means not loading torch.func; runs with --repeat time the routes and keep the
    fastest per call (see README, "Which engine runs")."""
    from jaccli.routing import ROUTES, TRIAL_BUDGET_S
    from jaccli.transforms import choose_mode, worth_a_trial

    command, batch = request.command, request.batch_dim
    n_in = sum(sample_primals[a].numel() for a in _as_tuple(argnums))
    n_out = sum(t.numel() for _, t in trees.leaves(sample_output))
    call_time = timings.get("function, first call").times[0]
    passes = n_out if command in ("jacrev", "jacobian") else 1
    routed = ("jacrev", "jacfwd") if command == "jacobian" else (command,)
    has_loop = any(route.loop for c in routed for route in ROUTES[c])  # else no need to estimate
    loop_ok = has_loop and _loop_ok(n_in if command == "hessian" else n_out, call_time, fn, primals, batch)
    # Only where every route computes what the command names: jacfwd, hessian and --mode fwd
    # keep forward mode (and its result dtypes), --randomness different (vmap's) keeps torch.func.
    free = command in FREE_ROUTES and request.mode != "fwd" and request.randomness != "different"
    free = free and not request.compile  # --compile traces torch.func's transforms: they go first
    auto = request.engine == "auto" and batch is None and free
    untaxed_first = auto and not request.repeat  # --repeat 0 is one-shot too
    trial = auto and bool(request.repeat) and passes * PASS_COST * call_time <= TRIAL_BUDGET_S
    if command != "jacobian":
        return Plan((command,), None, untaxed_first, loop_ok, trial)
    if request.mode != "auto":
        routed = "jacfwd" if request.mode == "fwd" else "jacrev"
        note = f"mode: {_MODE_NAMES[routed]} (--mode {request.mode})"
        return Plan((routed,), note, untaxed_first, loop_ok, trial)
    if untaxed_first and loop_ok:
        why = f"--mode auto, one-shot: {n_out} reverse passes cost less than loading torch.func"
        return Plan(("jacrev",), f"mode: reverse ({why})", True, True, False)
    if worth_a_trial(n_in, n_out, call_time):
        return Plan(("jacrev", "jacfwd"), None, untaxed_first, loop_ok, True)
    picked, why = choose_mode(n_in, n_out)
    routed = "jacfwd" if picked == "fwd" else "jacrev"
    reverse = routed == "jacrev"  # forward mode has one route of its own: nothing to choose
    note = f"mode: {_MODE_NAMES[routed]} (--mode auto: {why})"
    other = "jacrev" if routed == "jacfwd" else "jacfwd"  # tried only when this mode fails
    return Plan((routed,), note, untaxed_first and reverse, loop_ok, trial and reverse, (other,))


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


def _choice(router) -> str | None:
    """What a trial measured, for the timing table's footer."""
    from jaccli.render import duration

    if not getattr(router, "timed", None):  # only a Router's trial times routes
        return None
    return "fastest on the first call of " + ", ".join(f"{k} {duration(t)}" for k, t in router.timed.items())


def _as_tuple(argnums: Any) -> tuple[int, ...]:
    return argnums if isinstance(argnums, tuple) else (argnums,)


def _notes(
    layout, rename, results, flatten: bool, batch: int | None, mode_note: str | None
) -> dict[str, str]:
    from jaccli.render import jacobian_note

    notes = {}
    for key, info in layout:
        key = rename(key)
        if info is None or key not in results:
            continue
        if flatten:
            lead = results[key].shape[:1] if batch is not None else ()
            results[key] = results[key].reshape(lead + info.matrix_shape)
        lines = [jacobian_note(info, flatten)]
        if batch is not None:
            lines.append("a batch dimension leads: one Jacobian per sample")
        if mode_note:
            lines.append(mode_note)
        notes[key] = "\n".join(lines)
    return notes


def _sources(values: Sequence[SourceLike], option: str, stdin: Any) -> list:
    """Read option values; arrays and tensors given from Python are taken as they are."""
    import numpy as np

    from jaccli.inputs import Array, read_source

    sources = []
    for value in values:
        if isinstance(value, str):
            sources.append(read_source(value, option, stdin))
        else:
            if getattr(value, "layout", None) is not None and str(value.layout) != "torch.strided":
                raise InputError(f"{option}: a {value.layout} tensor; jac takes dense tensors (.to_dense())")
            dtype = str(getattr(value, "dtype", "")).replace("torch.", "")
            if dtype == "bfloat16":  # numpy has none: through float32, exactly, and back
                value = value.float()
            data = value.detach().cpu().numpy() if hasattr(value, "detach") else np.asarray(value)
            kept = dtype if dtype == "bfloat16" else str(data.dtype)
            sources.append([Array(data, f"{option} (array)", dtype=kept)])
    return sources


def _to_host(value: Any, key: str) -> tuple[Any, str]:
    """A numpy array from a tensor (or a plain number in aux)."""
    import numpy as np
    import torch

    if isinstance(value, torch.Tensor):
        from jaccli.trust import materialize

        dtype = str(value.dtype).replace("torch.", "")
        tensor = materialize(value.detach()).cpu()
        if tensor.dtype == torch.bfloat16:
            tensor = tensor.float()  # numpy has no bfloat16
        return tensor.resolve_conj().numpy(), dtype
    if isinstance(value, (bool, int, float)) or (
        isinstance(value, np.ndarray) and value.dtype.kind in "biuf"
    ):
        array = np.asarray(value)
        return array, str(array.dtype)
    from jaccli.errors import FunctionError, kind_of

    raise FunctionError(f"{key} is {kind_of(value)}; jac writes tensors and numbers only")


def deliver(outcome: Outcome, request: Request, stdout: IO[bytes], text_stdout: IO[str]) -> None:
    """Write the results where the request says (timed as the 'write' phase)."""
    from jaccli import outputs
    from jaccli.distributed import rank
    from jaccli.render import render_text

    fmt = output_format(request)
    if outcome.sparse is not None:
        from jaccli.sparse.command import deliver_sparse

        return deliver_sparse(outcome, request, stdout, text_stdout)
    if outcome.streamed is not None:  # written while computed (its write is timed already)
        if rank() == 0:
            _write_timings(outcome.timings, request)
        return
    with outcome.timings.phase("write"):
        if request.out is not None and request.out != "-":
            outputs.write_results(request.out, fmt, outcome.results)
        elif fmt == "text":
            render_text(text_stdout, outcome.results, outcome.notes, outcome.dtypes, outcome.axes)
        else:
            outputs.write_stream(stdout, fmt, outcome.results)
        if request.plot is not None:
            from jaccli.pictures import write_plot

            write_plot(request.plot, outcome.results, outcome.axes)
    _write_timings(outcome.timings, request)


@dataclass
class CheckOutcome:
    report: Any  # jaccli.check.Report
    timings: Timings


def run_check(request: Request, stdout: BinaryIO | None = None) -> CheckOutcome:
    """``jac check``: float64 unless --dtype says otherwise; nothing is written."""
    check_request(request, stdout)
    fmt = output_format(request)
    if fmt not in ("text", "json", "yaml"):
        raise InputError(f"jac check writes a report: use text, json or yaml, not {fmt}")
    if request.batch_dim is not None:
        raise InputError("jac check does not take --batch-dim; check one sample")
    request = replace(request, dtype=request.dtype or "float64")
    from jaccli.check_plan import refuse_sparse

    refuse_sparse(request.primals)
    with contextlib.redirect_stdout(UserStdout(sys.stderr)):
        if request.sparse or request.sparsity:
            from jaccli.sparse.checking import check_sparse

            return check_sparse(request)
        return _check(request)


def _check(request: Request) -> CheckOutcome:

    from jaccli import check, check_plan, transforms

    setup = _disciplined(_setup(request, ("check",)), request)
    fn, primals, timings = setup.fn, setup.primals, setup.timings
    output, _ = transforms.call_function(fn, primals, request.has_aux)
    whole = check_plan.whole_jacobians(request, primals, output)
    dtype = str(primals[0].dtype).replace("torch.", "")
    tolerance = check.tolerances(dtype, rtol=request.rtol, atol=request.atol, eps=request.eps)
    with timings.phase("checks"):
        rows = transforms.guarded(
            lambda: check.run_checks(
                fn,
                primals,
                has_aux=request.has_aux,
                tolerance=tolerance,
                rng=setup.rng,
                directions=request.directions,
                full=request.full,
                names=setup.names,
                order=request.order,
                randomness="same" if setup.profile.random else "error",
                whole=whole,
                nondet_tol=request.nondet_tol,
            ),
            "check",
        )
    report = check.Report(rows, tolerance, dtype)
    check_plan.require_a_check(report)
    check_footer(timings, "check", setup, dtype, request)
    return CheckOutcome(report, timings)


def check_footer(timings: Timings, command: str, setup: Setup, dtype: str, request: Request) -> None:
    """The function alone, timed, and the footer of a check's table (no derivative-to-function
    ratio: a check runs many derivatives)."""
    import torch

    timings.series("function alone", lambda: setup.fn(*setup.primals), request.repeat, request.warmup)
    device, version = str(setup.device), str(torch.__version__)
    timings.footer.update(command=command, engine="torch.func", device=device, dtype=dtype, torch=version)


def deliver_check(outcome: CheckOutcome, request: Request, text_stdout: IO[str]) -> None:
    from jaccli import outputs
    from jaccli.render import render_checks
    from jaccli.streams import write_text

    fmt = output_format(request)
    doc = outcome.report.as_dict()
    with outcome.timings.phase("write"):
        if request.out is not None and request.out != "-":
            outputs.atomic_write(request.out, lambda fh: fh.write(outputs.dump_document(doc, fmt).encode()))
        elif fmt == "text":
            render_checks(text_stdout, outcome.report)
        else:
            write_text(text_stdout, outputs.dump_document(doc, fmt))
    _write_timings(outcome.timings, request)


def _write_timings(timings: Timings, request: Request) -> None:
    if request.timings_path is None:
        return
    from jaccli import outputs

    doc = timings.as_dict()
    fmt = outputs.format_for_path(request.timings_path, "--timings", TIMINGS_FORMATS)
    outputs.atomic_write(request.timings_path, lambda fh: fh.write(outputs.dump_document(doc, fmt).encode()))
