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
    randomness: str = "error"
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
    full: bool = False  # check: the whole Jacobian by finite differences, column by column
    rtol: float | None = None  # check: tolerances (defaults: torch.autograd.gradcheck's)
    atol: float | None = None
    eps: float | None = None
    directions: int = 3  # check: random directions for the adjoint and finite differences
    repeat: int | None = None  # None: automatic (see timing.series)
    warmup: int | None = None
    stdin: BinaryIO | None = None


@dataclass
class Outcome:
    """Results on the host as numpy arrays, keyed as the contract names them."""

    results: dict[str, Any]
    notes: dict[str, str]  # per key: what a Jacobian's shape means
    dtypes: dict[str, str]  # per key: the torch dtype computed in (bfloat16 is written as float32)
    timings: Timings


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
    if request.chunk_size is not None and request.chunk_size < 1:
        raise InputError(f"--chunk-size {request.chunk_size}: must be 1 or more")


def run(request: Request, stdout: BinaryIO | None = None) -> Outcome:
    """Compute what ``request`` asks; nothing is written (see :func:`deliver`)."""
    check_request(request, stdout)
    # The user's code may print: keep standard output for results alone.
    with contextlib.redirect_stdout(sys.stderr):
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


def _setup(request: Request, commands: tuple[str, ...]) -> Setup:
    """Load the function, read the inputs, move them to the device: the first three phases."""
    import numpy as np

    from jaccli import arguments, transforms
    from jaccli.devices import place_module, resolve_device, synchronizer
    from jaccli.inputs import Stdin
    from jaccli.loading import check_call, load_function
    from jaccli.routing import ENGINES

    _check_options(request, commands, ENGINES)
    device = resolve_device(request.device)
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
    if request.command in ("jvp", "hvp"):
        tangents = arguments.tangent_tensors(
            tangent_sources, primals, rng, names, request.command, request.batch_dim
        )
    return Setup(fn, primals, names, argnums, tangents, cotangent_sources, device, timings, rng)


def _run(request: Request) -> Outcome:
    from jaccli import arguments, modules, transforms
    from jaccli.routing import Router, evaluate

    command = request.command
    setup = _setup(request, transforms.COMMANDS)
    fn, primals, names, argnums = setup.fn, setup.primals, setup.names, setup.argnums
    tangents, timings, rng, device = setup.tangents, setup.timings, setup.rng, setup.device
    batch = request.batch_dim
    with timings.phase("function, first call"):
        output, aux = transforms.call_function(
            lambda *p: evaluate(fn, p, batch, request.engine), primals, request.has_aux
        )
    sample_output, sample_primals = _per_sample_shapes(output, primals, batch)
    if command in ("hessian", "hvp"):
        _check_scalar(command, sample_output)
    mode_note = None
    routed, trial = command, False
    if command == "jacobian":
        call_time = timings.get("function, first call").times[0]
        routed, why, trial = _choose_mode(
            request.mode, sample_output, sample_primals, argnums, call_time, batch
        )
        mode_note = f"mode: {_MODE_NAMES[routed]} ({why})"
    layout = transforms.layout(routed, sample_output, sample_primals, argnums, aux, request.has_aux)
    rename = (lambda k: modules.rename_key(k, command, names, argnums)) if names else (lambda k: k)
    keys = [rename(k) for k, _ in layout]
    if request.select is not None and request.select not in keys:
        raise InputError(f"--select {request.select!r}: no such result; the keys are {', '.join(keys)}")
    chosen = [request.select] if request.select else keys
    _check_memory(command, layout, sample_primals, argnums, primals, batch, request.max_memory)
    from jaccli.outputs import check_count

    check_count(output_format(request), chosen, f"-o {request.out}" if request.out else "--format npy")
    cotangents = None
    if command == "vjp":
        cotangents = arguments.cotangent_tree(setup.cotangent_sources, output, rng, batched=batch is not None)
    if request.strict:
        wrt = tuple(range(len(primals))) if command in ("jvp", "vjp", "hvp") else _as_tuple(argnums)
        first = [p.select(batch, 0) for p in primals] if batch is not None else primals
        transforms.strict_check(fn, first, wrt, request.has_aux)

    def router_for(routed_command: str) -> Router:
        options = {
            "tangents": tangents,
            "cotangents": cotangents,
            "argnums": argnums,
            "has_aux": request.has_aux,
            "chunk_size": request.chunk_size,
            "randomness": request.randomness,
        }
        return Router(routed_command, request.engine, fn, primals, options, batch_dim=batch)

    with timings.phase("first call"):
        if trial:
            router, tree, mode_note = _trial(router_for, timings.sync)
        else:
            router = router_for(routed)
            tree = router()
    timings.notes.extend(router.fallbacks)
    steady, engine = router, router.label
    if request.compile:
        from jaccli.compiled import compile_router

        steady, tree, engine = compile_router(router, tree, timings)
    timings.series("steady-state compute", steady, request.repeat, request.warmup)
    timings.series(
        "function alone", lambda: evaluate(fn, primals, batch, request.engine), request.repeat, request.warmup
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

    import torch

    if mode_note:
        timings.footer["mode"] = mode_note
    timings.footer.update(
        command=command,
        engine=engine,
        device=str(device),
        dtype=str(primals[0].dtype).replace("torch.", ""),
        torch=str(torch.__version__),
        cost_ratio=timings.ratio("steady-state compute", "function alone"),
    )
    return Outcome(results, notes, dtypes, timings)


def _check_memory(command, layout, sample_primals, argnums, primals, batch, limit) -> None:
    """Refuse a Jacobian or Hessian larger than the memory allowed, before computing any of it."""
    from jaccli.errors import human_size
    from jaccli.inputs import available_memory

    itemsize = primals[0].element_size()
    samples = primals[0].shape[batch] if batch is not None else 1
    blocks = []
    for key, info in layout:
        if info is not None:
            blocks.append((key, (samples, *info.output_shape, *info.input_shape)))
        elif key.startswith("hessian"):
            args = _as_tuple(argnums)
            i, j = (int(p) for p in key.split(".")[1:]) if "." in key else (0, 0)
            shape = (samples, *sample_primals[args[i]].shape, *sample_primals[args[j]].shape)
            blocks.append((key, shape))
    total = sum(math.prod(shape) for _, shape in blocks) * itemsize
    allowed = limit if limit is not None else int(0.8 * available_memory())
    if total <= allowed:
        return
    key, shape = max(blocks, key=lambda b: math.prod(b[1]))
    shown = shape if batch is not None else shape[1:]
    where = "--max-memory" if limit is not None else "80% of the memory free now"
    raise InputError(
        f"the {command} results would take {human_size(total)} ({key} alone has shape {tuple(shown)}), "
        f"more than {where} ({human_size(allowed)}): compute fewer blocks with --argnums or "
        "--select, use --chunk-size to lower the peak if it only just fits, ask for J.v (jac jvp) or "
        "u^T.J (jac vjp) instead, or raise --max-memory"
    )


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


_MODE_NAMES = {"jacfwd": "forward", "jacrev": "reverse"}


def _choose_mode(
    mode: str, output: Any, primals: Sequence[Any], argnums: Any, call_time: float, batch: int | None
) -> tuple[str, str, bool]:
    """(jacfwd or jacrev, why, whether to time both on the first call instead)."""
    from jaccli.transforms import choose_mode, worth_a_trial

    if mode != "auto":
        return ("jacfwd" if mode == "fwd" else "jacrev"), f"--mode {mode}", False
    n_in = sum(primals[a].numel() for a in _as_tuple(argnums))
    n_out = sum(t.numel() for _, t in trees.leaves(output))
    picked, why = choose_mode(n_in, n_out)
    trial = worth_a_trial(n_in, n_out, call_time)
    return ("jacfwd" if picked == "fwd" else "jacrev"), f"--mode auto: {why}", trial


def _trial(router_for: Callable[[str], Any], sync: Callable[[], None]) -> tuple[Any, Any, str]:
    """Time forward and reverse mode once each (after a warm-up run) and keep the faster."""
    import time

    routers = {name: router_for(name) for name in ("jacrev", "jacfwd")}
    trees_: dict[str, Any] = {}
    times: dict[str, float] = {name: float("inf") for name in routers}
    for router in routers.values():
        router()  # the warm-up: lazy imports, the route through any fallbacks
    ran_other = [name for name, router in routers.items() if router.chosen[0].command != name]
    if ran_other:  # jacfwd fell back to reverse mode (no forward-mode formula): nothing to compare
        router = routers["jacrev"]
        why = f"--mode auto: forward mode is not available here ({'; '.join(routers['jacfwd'].fallbacks)})"
        return router, router(), f"mode: reverse ({why})"
    for order in (("jacrev", "jacfwd"), ("jacfwd", "jacrev")):  # alternate: load hits both
        for name in order:
            sync()
            start = time.perf_counter()
            trees_[name] = routers[name]()
            sync()
            times[name] = min(times[name], time.perf_counter() - start)
    best = min(times, key=times.get)
    from jaccli.render import duration

    why = (
        f"--mode auto, small enough to measure: forward {duration(times['jacfwd'])}, "
        f"reverse {duration(times['jacrev'])} on the first call"
    )
    return routers[best], trees_[best], f"mode: {_MODE_NAMES[best]} ({why})"


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
            data = value.detach().cpu().numpy() if hasattr(value, "detach") else np.asarray(value)
            sources.append([Array(data, f"{option} (array)", dtype=str(data.dtype))])
    return sources


def _to_host(value: Any, key: str) -> tuple[Any, str]:
    """A numpy array from a tensor (or a plain number in aux)."""
    import numpy as np
    import torch

    if isinstance(value, torch.Tensor):
        dtype = str(value.dtype).replace("torch.", "")
        tensor = value.detach().cpu()
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
    from jaccli.render import render_text

    fmt = output_format(request)
    with outcome.timings.phase("write"):
        if request.out is not None and request.out != "-":
            outputs.write_results(request.out, fmt, outcome.results)
        elif fmt == "text":
            render_text(text_stdout, outcome.results, outcome.notes, outcome.dtypes)
        else:
            outputs.write_stream(stdout, fmt, outcome.results)
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
    with contextlib.redirect_stdout(sys.stderr):
        return _check(request)


def _check(request: Request) -> CheckOutcome:
    import torch

    from jaccli import check, transforms

    setup = _setup(request, ("check",))
    fn, primals, timings = setup.fn, setup.primals, setup.timings
    with timings.phase("function, first call"):
        transforms.call_function(fn, primals, request.has_aux)
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
            ),
            "check",
        )
    timings.series("function alone", lambda: fn(*primals), request.repeat, request.warmup)
    timings.footer.update(
        command="check",
        engine="torch.func",
        device=str(setup.device),
        dtype=dtype,
        torch=str(torch.__version__),
    )
    return CheckOutcome(check.Report(rows, tolerance, dtype), timings)


def deliver_check(outcome: CheckOutcome, request: Request, text_stdout: IO[str]) -> None:
    from jaccli import outputs
    from jaccli.render import render_checks

    fmt = output_format(request)
    doc = outcome.report.as_dict()
    with outcome.timings.phase("write"):
        if request.out is not None and request.out != "-":
            outputs.atomic_write(request.out, lambda fh: fh.write(outputs.dump_document(doc, fmt).encode()))
        elif fmt == "text":
            render_checks(text_stdout, outcome.report)
        else:
            text_stdout.write(outputs.dump_document(doc, fmt))
            text_stdout.flush()
    _write_timings(outcome.timings, request)


def _write_timings(timings: Timings, request: Request) -> None:
    if request.timings_path is None:
        return
    from jaccli import outputs

    doc = timings.as_dict()
    fmt = outputs.format_for_path(request.timings_path, "--timings", TIMINGS_FORMATS)
    outputs.atomic_write(request.timings_path, lambda fh: fh.write(outputs.dump_document(doc, fmt).encode()))
