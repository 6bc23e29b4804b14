"""Stage 1, the problem: the function loaded, the inputs read and on the device, the function's
output once.

:func:`load` gives what every command works on (a :class:`Problem` without an output);
:func:`evaluate` makes the derivative commands' first call of the function, which profiles it
(:mod:`jaccli.autodiff.trust`: a function that changes its inputs or draws random numbers is
wrapped so that every later call sees the inputs the user gave and the ``--seed``-ed stream) and
fixes the output's structure, hence the cotangents and, later, the result keys. Commands that make
no first call of their own through a router (check, ``--directions``, spectrum, ``--sparse``)
take :func:`disciplined`, that first call alone; either way the function is called once here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Callable

from jaccli import trees
from jaccli.errors import InputError
from jaccli.pipeline.request import Request, SourceLike
from jaccli.report.timing import Timings


@dataclass
class Problem:
    """What a command works on, once loaded, read and placed on the device."""

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
    state: list = field(default_factory=list)  # tensors fn reads but is not given (jaccli.autodiff.trust)
    profile: Any = None  # what the first call showed (jaccli.autodiff.calls.Profile)
    # Set by evaluate(): the function's output at the primals, and one sample's shapes (meta tensors)
    output: Any = None
    aux: Any = None
    sample_output: Any = None
    sample_primals: list = field(default_factory=list)
    cotangents: Any = None  # vjp: the cotangent tree, matched to the output


def load(request: Request, commands: tuple[str, ...]) -> Problem:
    """Load the function, read the inputs, move them to the device: the first three phases."""
    import numpy as np

    from jaccli.autodiff import transforms
    from jaccli.autodiff.devices import place_module, resolve_device, synchronizer
    from jaccli.autodiff.routing import ENGINES
    from jaccli.io import arguments
    from jaccli.io.inputs import Stdin
    from jaccli.io.loading import check_call, load_function
    from jaccli.scale.distributed import local_device

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
            from jaccli.autodiff import modules

            module = modules.as_module(func, "--wrt params" if request.wrt == "params" else "--state")
            if request.state:
                modules.load_state(module, request.state)
    with timings.phase("read inputs"):
        inputs = arguments.primal_tensors(sources(request.primals, "--primals", stdin), request.dtype, rng)
        check_call(func, len(inputs), request.kwargs, str(name))
        tangent_sources = sources(request.tangents, "--tangents", stdin)
        cotangent_sources = sources(request.cotangents, "--cotangents", stdin)
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
    from jaccli.autodiff.trust import state_of

    state = state_of(module, inputs if names is not None else ())
    return Problem(
        fn, primals, names, argnums, tangents, cotangent_sources, device, timings, rng, tangent_sources, state
    )


def evaluate(request: Request, problem: Problem) -> Problem:
    """The function's first call, profiled (see the module's docstring), then what its output
    fixes: one sample's shapes, the scalar check of hessian and hvp, vjp's cotangents, and
    ``--strict``'s check that every input reaches the output."""
    from jaccli.autodiff import transforms
    from jaccli.io import arguments

    problem = disciplined(problem, request, batched=True)
    primals, batch, output, fn = problem.primals, request.batch_dim, problem.output, problem.fn
    sample_output, sample_primals = per_sample_shapes(output, primals, batch)
    if request.command in ("hessian", "hvp"):
        check_scalar(request.command, sample_output)
    cotangents = None
    if request.command == "vjp":
        cotangents = arguments.cotangent_tree(
            problem.cotangent_sources, output, problem.rng, batched=batch is not None
        )
    if request.strict:
        wrt = (
            tuple(range(len(primals)))
            if request.command in ("jvp", "vjp", "hvp")
            else argnum_tuple(problem.argnums)
        )
        first = [p.select(batch, 0) for p in primals] if batch is not None else primals
        transforms.strict_check(fn, first, wrt, request.has_aux)
    return replace(problem, sample_output=sample_output, sample_primals=sample_primals, cotangents=cotangents)


def disciplined(problem: Problem, request: Request, batched: bool = False) -> Problem:
    """``problem`` with its function profiled by one first call (jaccli.autodiff.trust) and
    wrapped, so that every later call sees the inputs the user gave and the ``--seed``-ed random
    stream. For the commands that make their own first call without the router's (check,
    --directions, spectrum, --sparse); a plain function comes back unwrapped. That call's output
    (and aux) come back on the problem, so the function is not called again for them: of the
    first sample under --batch-dim, or with ``batched`` of the whole batch (vmapped, as later
    calls see it)."""
    from jaccli.autodiff import transforms
    from jaccli.autodiff.routing import evaluate as call
    from jaccli.autodiff.trust import first_call

    primals, batch = problem.primals, request.batch_dim
    if batched:
        args = primals

        def function(g: Callable[..., Any]) -> Callable[..., Any]:
            return lambda *p: call(g, p, batch, request.engine, request.randomness)
    else:  # the function sees one sample at a time
        args = [p.select(batch, 0) for p in primals] if batch is not None else primals

        def function(g: Callable[..., Any]) -> Callable[..., Any]:
            return g

    with problem.timings.phase("function, first call"):
        (output, aux), fn, how = first_call(
            problem.fn,
            lambda g: transforms.call_function(function(g), args, request.has_aux),
            request.seed,
            problem.state,
        )
    return replace(problem, fn=fn, profile=how, output=output, aux=aux)


def sources(values: Sequence[SourceLike], option: str, stdin: Any) -> list:
    """Read option values; arrays and tensors given from Python are taken as they are."""
    import numpy as np

    from jaccli.io.inputs import Array, read_source

    read = []
    for value in values:
        if isinstance(value, str):
            read.append(read_source(value, option, stdin))
        else:
            if getattr(value, "layout", None) is not None and str(value.layout) != "torch.strided":
                raise InputError(f"{option}: a {value.layout} tensor; jac takes dense tensors (.to_dense())")
            dtype = str(getattr(value, "dtype", "")).replace("torch.", "")
            if dtype == "bfloat16":  # numpy has none: through float32, exactly, and back
                value = value.float()
            data = value.detach().cpu().numpy() if hasattr(value, "detach") else np.asarray(value)
            kept = dtype if dtype == "bfloat16" else str(data.dtype)
            read.append([Array(data, f"{option} (array)", dtype=kept)])
    return read


def per_sample_shapes(output: Any, primals: Sequence[Any], batch: int | None) -> tuple[Any, list]:
    """What one sample looks like (shapes only, on the meta device) under --batch-dim."""
    if batch is None:
        return output, list(primals)
    import torch

    def drop(t: Any, dim: int) -> Any:
        shape = list(t.shape)
        del shape[dim]
        return torch.empty(shape, device="meta", dtype=t.dtype)

    return trees.map_leaves(lambda t: drop(t, 0), output), [drop(p, batch) for p in primals]


def check_scalar(command: str, output: Any) -> None:
    import torch

    if not isinstance(output, torch.Tensor) or output.numel() != 1:
        shapes = ", ".join(f"{k or 'output'} {tuple(t.shape)}" for k, t in trees.leaves(output))
        raise InputError(
            f"jac {command} needs a function with a one-element output; this one gives {shapes}: "
            "reduce it (e.g. .sum()) or use jac jacobian"
        )


def argnum_tuple(argnums: Any) -> tuple[int, ...]:
    return argnums if isinstance(argnums, tuple) else (argnums,)


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
