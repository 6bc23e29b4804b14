"""Stage 0, the request: what the user asked, checked before anything is loaded.

A :class:`Request` holds one command's options (field names follow the command line); the checks
here need no function and no data (output destinations, formats, option values), so a bad
destination fails in milliseconds. :class:`Outcome` and :class:`CheckOutcome` are what the
pipeline hands back: results on the host, ready for :mod:`jaccli.pipeline.delivery`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Callable, Union

from jaccli.errors import InputError
from jaccli.report.timing import Timings

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
    randomness: str = "same"  # every evaluation runs on one seeded stream (docs/engines.md, "Randomness")
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
    compile: bool = (
        False  # trace the transform once and compile it with TorchInductor (jaccli.autodiff.compiled)
    )
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
    argv: list[str] | None = None  # the command line ("jac", ...) for the record; None from Python


@dataclass
class Outcome:
    """Results on the host as numpy arrays, keyed as the contract names them."""

    results: dict[str, Any]
    notes: dict[str, str]  # per key: what a Jacobian's shape means
    dtypes: dict[str, str]  # per key: the torch dtype computed in (bfloat16 is written as float32)
    timings: Timings
    axes: dict[str, Any] = field(default_factory=dict)  # per Jacobian or Hessian key: pictures.Axes
    streamed: Any = None  # a jaccli.scale.streaming.Streamed: the result went to its file while computed
    sparse: Any = None  # a jaccli.sparse.files.SparseResult (--sparse)
    # An outcome that writes itself (--sparse: jaccli.sparse.command.deliver_sparse), called by
    # delivery.deliver as writer(outcome, request, stdout, text_stdout) in place of the plain writers
    writer: Callable[..., None] | None = None


def output_format(request: Request) -> str:
    if request.out is not None and request.out != "-":
        from jaccli.io.outputs import format_for_path

        return format_for_path(request.out)
    return request.format


def check_request(request: Request, stdout: BinaryIO | None = None) -> None:
    """Checks that need no function and no data: destinations, formats."""
    from jaccli.io import outputs

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
        from jaccli.report.pictures import check_plot

        check_plot(request.plot, request.command, request.batch_dim)


@dataclass
class CheckOutcome:
    report: Any  # jaccli.checking.rows.Report
    timings: Timings
