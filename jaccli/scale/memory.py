"""How a Jacobian is computed so that it fits in the memory allowed: at once, in chunks, or
streamed to the ``.npy`` file it is written to.

Estimates, made before any derivative runs:

- the result: every block's entries times the item size (times the batch under --batch-dim);
- the working memory of computing it at once: torch.func's jacrev and jacfwd vmap over every
  one-hot vector together, so each pass (a row in reverse mode, a column in forward mode) keeps
  its one-hot vector, its result and the function's intermediates alive at once; a pass is
  counted as ``2 x (input elements + output elements)`` items, which covers elementwise layers
  and matrix products whose intermediates are the size of their inputs or outputs;
- where that count could be too low to matter (see :class:`Probe`), one pass is measured: the
  function evaluated with its graph and one reverse pass with one cotangent (forward mode: one
  pass with one tangent), under a dispatch mode that adds up the bytes of every tensor the
  operators create while it is alive, and keeps the peak. A pass then counts as its one-hot
  vector and result plus that peak, if more. ``sin(x).outer(x)`` is such a function: each
  reverse pass holds about three output-sized tensors (the cotangent and two products in the
  outer product's derivative), more than the count above; its chunks would not have fit.

When the whole does not fit in ``--max-memory`` (default: 80% of the memory free now) but the
result does, the passes go in chunks small enough for the peak to fit. When the result itself
does not fit, it is streamed, a chunk at a time, into ``-o PATH.npy`` (one result: one block,
or ``--select``); any other output is an input error before any work.
"""

from __future__ import annotations

import math
import weakref
from dataclasses import dataclass, field
from typing import Any, Callable

from jaccli.errors import InputError, human_size

AT_ONCE, CHUNKED, STREAMED = "at once", "chunked", "streamed"


@dataclass(frozen=True)
class Plan:
    how: str  # AT_ONCE, CHUNKED or STREAMED
    mode: str | None = None  # fwd or rev: the preferred mode of the chunks
    chunk: int | None = None  # passes (rows or columns) per chunk
    why: str = ""  # for the timing table: the sizes that decided

    def note(self, streamed_to: str | None = None) -> str:
        unit = "rows" if self.mode == "rev" else "columns"
        if self.how == CHUNKED:
            return f"memory: computed in chunks of {self.chunk} {unit} ({self.why})"
        if self.how == STREAMED:
            return f"memory: streamed to {streamed_to} in chunks of {self.chunk} {unit} ({self.why})"
        return ""


@dataclass(frozen=True)
class Block:
    key: str
    shape: tuple[int, ...]  # with the batch leading (1 without --batch-dim)
    info: Any = None  # the JacobianInfo of a Jacobian block; None for a Hessian (never chunked)

    @property
    def n_out(self) -> int:
        return self.info.matrix_shape[0] if self.info else 0

    @property
    def n_in(self) -> int:
        return self.info.matrix_shape[1] if self.info else 0


def blocks(layout: Any, sample_primals: Any, argnums: Any, samples: int) -> list[Block]:
    """Every Jacobian or Hessian block ``layout`` names, with its shape."""
    args = argnums if isinstance(argnums, tuple) else (argnums,)
    found = []
    for key, info in layout:
        if info is not None:
            found.append(Block(key, (samples, *info.output_shape, *info.input_shape), info))
        elif key.startswith("hessian"):
            i, j = (int(p) for p in key.split(".")[1:]) if "." in key else (0, 0)
            shape = (samples, *sample_primals[args[i]].shape, *sample_primals[args[j]].shape)
            found.append(Block(key, shape))
    return found


def allowed_bytes(limit: int | None) -> int:
    from jaccli.io.inputs import available_memory

    return limit if limit is not None else int(0.8 * available_memory())


def plan(
    command: str,
    found: list[Block],
    itemsize: int,
    mode: str,
    limit: int | None,
    chunk_size: int | None,
    streamable: Block | None,
    stream_as: str = "auto",
    distributed: bool = False,
    probe: Probe | None = None,
) -> Plan:
    """At once, chunked or streamed; an input error when it cannot fit at all.

    ``mode`` is the mode computing at once would use (fwd or rev); ``streamable`` is the one
    block written to ``-o PATH.npy`` when the request allows streaming, else None, and
    ``stream_as`` the mode asked for it (fwd, rev, or auto: fewer passes).
    ``distributed`` (torchrun) always streams: each process writes its share of the file.
    ``probe`` measures one pass of the function where the count of a pass could be too low.
    """
    allowed = allowed_bytes(limit)
    where = "--max-memory" if limit is not None else "80% of the memory free now"
    result = sum(math.prod(b.shape) for b in found) * itemsize
    jacobians = [b for b in found if b.info is not None]
    if distributed or (streamable is not None and result > allowed):
        if streamable is None:
            raise InputError(
                "under torchrun, jac shards one Jacobian block written with -o PATH.npy; add -o J.npy "
                "(and --select KEY when there are several results), or run without torchrun"
            )
        return _streamed(
            streamable,
            itemsize,
            stream_mode(streamable, stream_as),
            allowed,
            where,
            chunk_size,
            result,
            probe,
        )
    samples = found[0].shape[0] if found else 1
    n_in = sum({b.info.input_index: b.n_in for b in jacobians}.values())
    n_out = sum({b.info.output_key: b.n_out for b in jacobians}.values())
    per_pass = 2 * itemsize * (n_in + n_out) * samples
    passes = n_out if mode == "rev" else n_in
    if mode == "rev" and chunk_size:
        passes = min(passes, chunk_size)
    chunkable = bool(jacobians) and samples == 1 and len(jacobians) == len(found)
    once, measured = 0, ""
    if chunkable and probe is not None:  # the only case a measurement can change: chunks
        found_pass = probe.measure(mode, passes, allowed - result - passes * per_pass)
        if found_pass is not None:
            once = found_pass.once  # the evaluation's graph, held while the passes run
            if itemsize * (n_in + n_out) + found_pass.per_pass > per_pass:
                per_pass = itemsize * (n_in + n_out) + found_pass.per_pass
                measured = f", a pass holding {human_size(per_pass)} (measured)"
    if result + once + passes * per_pass <= allowed:
        return Plan(AT_ONCE)
    if chunkable and result <= allowed:  # one pass at a time if need be: the least it can hold
        chunk = chunk_size or max(1, (allowed - result - once) // per_pass)
        why = (
            f"the result takes {human_size(result)}, computing it at once about "
            f"{human_size(result + once + passes * per_pass)}{measured}, more than {where} "
            f"({human_size(allowed)})"
        )
        return Plan(CHUNKED, mode, chunk, why)
    if result <= allowed:
        return Plan(AT_ONCE)  # no way to chunk it (Hessians, --batch-dim): try as it is
    biggest = max(found, key=lambda b: math.prod(b.shape))
    shown = biggest.shape if samples > 1 else biggest.shape[1:]
    stream = "stream one block to disk with -o J.npy (--select KEY), " if jacobians else ""
    raise InputError(
        f"the {command} results would take {human_size(result)} ({biggest.key} alone has shape "
        f"{tuple(shown)}), more than {where} ({human_size(allowed)}): {stream}compute fewer blocks with "
        "--argnums, ask for J.v (jac jvp) or u^T.J (jac vjp) instead, or raise --max-memory"
    )


def _streamed(
    block: Block,
    itemsize: int,
    mode: str,
    allowed: int,
    where: str,
    chunk_size: int | None,
    result: int,
    probe: Probe | None = None,
) -> Plan:
    per_pass_work = 2 * itemsize * (block.n_in + block.n_out)
    other = block.n_in if mode == "rev" else block.n_out
    per_pass = per_pass_work + 2 * other * itemsize  # the chunk itself, and its copy on the way out
    passes = block.n_out if mode == "rev" else block.n_in
    once = 0
    found_pass = (
        probe.measure(mode, passes, allowed - passes * per_pass) if probe and not chunk_size else None
    )
    if found_pass is not None:
        once = found_pass.once
        measured_work = itemsize * (block.n_in + block.n_out) + found_pass.per_pass
        per_pass += max(0, measured_work - per_pass_work)
    chunk = chunk_size or max(1, min(passes, (allowed - once) // max(per_pass, 1)))
    why = f"the result takes {human_size(result)}; {where} is {human_size(allowed)}"
    return Plan(STREAMED, mode, chunk, why)


def stream_mode(block: Block, requested: str) -> str:
    """For streaming, the mode with fewer passes unless one was asked for (fwd or rev)."""
    if requested in ("fwd", "rev"):
        return requested
    return "fwd" if block.n_in < block.n_out else "rev"


# What a first call can have held at most: t seconds of writing at memory bandwidth (generously),
# and no more than the process's peak so far (resident memory, or CUDA's allocator). A pass,
# whose tensors mirror the call's, holds at most a few times that: where even that fits,
# nothing is measured, so small or quick functions pay nothing for the measurement.
BANDWIDTH = {"cpu": 2e11, "cuda": 2e13}  # bytes per second
PASS_OVER_CALL = 4  # a reverse pass: the gradient of every tensor of the call, and temporaries
# A measured pass is one pass of plain autograd; vmap's batching rules may copy a little more.
MEASURED_MARGIN = 1.25


@dataclass(frozen=True)
class Pass:
    once: int  # bytes the evaluation keeps alive once, whatever the passes (its graph)
    per_pass: int  # bytes one pass adds at its peak (the one-hot vector and intermediates)


@dataclass
class Probe:
    """One pass of the function, measured on demand (:func:`measure_pass`), at most once per mode.

    ``call_s`` is how long the first call took: with the process's peak memory so far it bounds
    what a pass can hold, so a measurement is made only where the plan could otherwise be wrong
    by enough to matter. A measured pass is counted ``MEASURED_MARGIN`` times.
    """

    fn: Callable[..., Any]
    primals: list
    argnums: Any
    has_aux: bool
    call_s: float
    device_type: str = "cpu"
    found: dict = field(default_factory=dict)

    def measure(self, mode: str, passes: int, room: int) -> Pass | None:
        """The measured pass, or None when even the most a pass could hold fits in ``room`` for
        ``passes`` passes (or the function could not be measured)."""
        held = self.call_s * BANDWIDTH.get(self.device_type, BANDWIDTH["cuda"])
        seen = peak_so_far(self.device_type)
        if seen is not None:
            held = min(held, seen)
        if passes * held * PASS_OVER_CALL <= room:
            return None
        if mode not in self.found:
            found = measure_pass(self.fn, self.primals, self.argnums, self.has_aux, mode)
            if found is not None:
                found = Pass(found.once, int(found.per_pass * MEASURED_MARGIN))
            self.found[mode] = found
        return self.found[mode]


def peak_so_far(device_type: str) -> int | None:
    """The most bytes this process has held: its peak resident memory (CPU), or CUDA's
    allocator's peak; None where the platform does not say."""
    import sys

    if device_type == "cuda":
        import torch

        return int(torch.cuda.max_memory_allocated()) if torch.cuda.is_initialized() else None
    if device_type != "cpu":
        return None
    try:
        import resource
    except ImportError:  # Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak) if sys.platform == "darwin" else int(peak) * 1024  # bytes on macOS, else KiB


def measure_pass(
    fn: Callable[..., Any], primals: list, argnums: Any, has_aux: bool, mode: str
) -> Pass | None:
    """What one pass of ``mode`` holds at its peak: the function evaluated with its graph, then a
    reverse pass with one cotangent (ones; the one-hot vectors themselves are counted apart);
    or, for forward mode, one evaluation with one tangent (ones), less a plain evaluation (the
    values are computed once, only the tangents per pass). None when the function cannot be
    evaluated so (jac then counts as before)."""
    import torch

    from jaccli import trees

    wrt = argnums if isinstance(argnums, tuple) else (argnums,)
    args = list(primals)
    try:
        with _Watch() as watch, torch.enable_grad():
            if mode == "fwd":  # the values once, their tangents per pass: the difference
                from torch.autograd import forward_ad

                with torch.no_grad():
                    fn(*args)
                once = watch.peak
                watch.restart()
                with forward_ad.dual_level():
                    for i in wrt:
                        args[i] = forward_ad.make_dual(args[i].detach(), torch.ones_like(args[i]))
                    fn(*args)
                return Pass(once, max(0, watch.peak - watch.start - once))
            for i in wrt:
                args[i] = args[i].detach().requires_grad_(True)
            out = fn(*args)
            out = out[0] if has_aux else out
            leaves = [t for _, t in trees.leaves(out) if isinstance(t, torch.Tensor) and t.requires_grad]
            once = watch.restart()
            if leaves:
                # the cotangent ones through a sum (grad_outputs would import sympy: a second)
                total = sum((t.real if t.is_complex() else t).sum() for t in leaves)
                torch.autograd.grad(total, [args[i] for i in wrt], allow_unused=True)
            return Pass(once, watch.peak - once)
    except Exception:  # noqa: BLE001 - a measurement never fails a run: the count stands
        return None


class _Watch:
    """A dispatch mode adding up the bytes of every tensor an operator creates while it is alive
    (views and in-place results, which alias an argument, are not new), and keeping the peak."""

    def __init__(self) -> None:
        from torch.utils._python_dispatch import TorchDispatchMode

        watch = self

        class Mode(TorchDispatchMode):
            @classmethod
            def _should_skip_dynamo(cls) -> bool:
                # else torch wraps __torch_dispatch__ in torch._dynamo.disable: seconds to import
                return False

            def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
                out = func(*args, **(kwargs or {}))
                if not watch.aliases(func):
                    for tensor in out if isinstance(out, (tuple, list)) else (out,):
                        watch.born(tensor)
                return out

        self.mode = Mode()
        self.live = self.peak = self.start = 0
        self.sizes: dict[int, int] = {}
        self.refs: dict[int, Any] = {}
        self._aliasing: dict[Any, bool] = {}

    def __enter__(self) -> _Watch:
        self.mode.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.mode.__exit__(*exc)

    def aliases(self, func: Any) -> bool:
        found = self._aliasing.get(func)
        if found is None:
            returns = getattr(getattr(func, "_schema", None), "returns", ())
            found = self._aliasing[func] = any(r.alias_info is not None for r in returns)
        return found

    def born(self, tensor: Any) -> None:
        import torch

        if not isinstance(tensor, torch.Tensor):
            return
        try:
            storage = tensor.untyped_storage()
            key, size = storage.data_ptr(), storage.nbytes()
        except (RuntimeError, NotImplementedError):  # no storage (efficient zeros, subclasses): no bytes
            return
        if size == 0 or key in self.sizes:
            return
        self.sizes[key] = size
        self.refs[key] = weakref.ref(storage, lambda _, key=key: self._freed(key))
        self.live += size
        self.peak = max(self.peak, self.live)

    def _freed(self, key: int) -> None:
        self.live -= self.sizes.pop(key, 0)
        self.refs.pop(key, None)

    def restart(self) -> int:
        """Start a new peak from what is alive now; returns that."""
        self.peak = self.start = self.live
        return self.live
