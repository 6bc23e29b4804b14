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
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import IO, Any, BinaryIO, Callable, Union

from jaccli import trees
from jaccli.errors import InputError
from jaccli.timing import Timings

TIMINGS_FORMATS = ("json", "yaml")
SourceLike = Union[str, Any]  # an option value ("x.npy", "randn:3", "[1, 2]") or an array/tensor


@dataclass
class Request:
    """Everything one command needs; field names follow the command-line options."""

    command: str  # jvp, vjp, jacfwd, jacrev
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
    timings_path: str | None = None
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


def _run(request: Request) -> Outcome:
    import numpy as np

    from jaccli import arguments, transforms
    from jaccli.devices import place_module, resolve_device, synchronizer
    from jaccli.inputs import Stdin
    from jaccli.loading import check_call, load_function
    from jaccli.render import jacobian_note

    if request.command not in transforms.COMMANDS:
        raise InputError(f"unknown command {request.command!r}; use one of {', '.join(transforms.COMMANDS)}")
    device = resolve_device(request.device)
    timings = Timings(sync=synchronizer(device))
    rng = np.random.default_rng(request.seed)
    stdin = Stdin(request.stdin)

    with timings.phase("load function"):
        func = load_function(request.func) if isinstance(request.func, str) else request.func
        name = request.func if isinstance(request.func, str) else getattr(func, "__name__", "the function")
    with timings.phase("read inputs"):
        primals = arguments.primal_tensors(_sources(request.primals, "--primals", stdin), request.dtype, rng)
        check_call(func, len(primals), request.kwargs, str(name))
        tangents = None
        if request.command == "jvp":
            tangents = arguments.tangent_tensors(
                _sources(request.tangents, "--tangents", stdin), primals, rng
            )
        elif request.tangents:
            raise InputError(f"--tangents is for jvp; {request.command} does not take it")
        cotangent_sources = _sources(request.cotangents, "--cotangents", stdin)
        if cotangent_sources and request.command != "vjp":
            raise InputError(f"--cotangents is for vjp; {request.command} does not take it")
        argnums = transforms.normalize_argnums(request.argnums, len(primals))
    with timings.phase("move to device"):
        place_module(func, device, request.dtype)
        primals = [p.to(device) for p in primals]
        tangents = [t.to(device) for t in tangents] if tangents is not None else None

    fn = transforms.bind(func, request.kwargs)
    with timings.phase("function, first call"):
        output, aux = transforms.call_function(fn, primals, request.has_aux)
    layout = transforms.layout(request.command, output, primals, argnums, aux, request.has_aux)
    keys = [k for k, _ in layout]
    if request.select is not None and request.select not in keys:
        raise InputError(f"--select {request.select!r}: no such result; the keys are {', '.join(keys)}")
    chosen = [request.select] if request.select else keys
    from jaccli.outputs import check_count

    check_count(output_format(request), chosen, f"-o {request.out}" if request.out else "--format npy")
    cotangents = None
    if request.command == "vjp":
        cotangents = arguments.cotangent_tree(cotangent_sources, output, rng)
    if request.strict:
        wrt = argnums if not isinstance(argnums, int) else (argnums,)
        if request.command in ("jvp", "vjp"):
            wrt = tuple(range(len(primals)))
        transforms.strict_check(fn, primals, wrt, request.has_aux)

    def derivative():
        return transforms.compute(
            request.command,
            fn,
            primals,
            tangents=tangents,
            cotangents=cotangents,
            argnums=argnums,
            has_aux=request.has_aux,
            chunk_size=request.chunk_size,
            randomness=request.randomness,
        )

    with timings.phase("first call"):
        tree = derivative()
    timings.series("steady-state compute", derivative, request.repeat, request.warmup)
    timings.series("function alone", lambda: fn(*primals), request.repeat, request.warmup)

    with timings.phase("move to host"):
        flat = dict(trees.leaves(tree))
        if list(flat) != keys:  # layout() and compute() must agree: a bug in jac if not
            raise AssertionError(f"result keys {list(flat)} differ from the layout {keys}")
        results, dtypes = {}, {}
        for key in chosen:
            results[key], dtypes[key] = _to_host(flat[key], key)
        notes = {}
        for key, info in layout:
            if info is not None and key in results:
                if request.flatten:
                    results[key] = results[key].reshape(info.matrix_shape)
                notes[key] = jacobian_note(info, request.flatten)

    import torch

    timings.footer.update(
        command=request.command,
        engine="torch.func",
        device=str(device),
        dtype=str(primals[0].dtype).replace("torch.", ""),
        torch=str(torch.__version__),
        cost_ratio=timings.ratio("steady-state compute", "function alone"),
    )
    return Outcome(results, notes, dtypes, timings)


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
    if request.timings_path is not None:
        doc = outcome.timings.as_dict()
        tfmt = outputs.format_for_path(request.timings_path, "--timings", TIMINGS_FORMATS)
        outputs.atomic_write(
            request.timings_path,
            lambda fh: fh.write(outputs.dump_document(doc, tfmt).encode("utf-8")),
        )
