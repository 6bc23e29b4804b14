"""Jacobians computed a chunk at a time: into memory (when only the working memory would not
fit), or straight into a ``.npy`` file (when the result itself would not), on one process or
sharded over torchrun's.

Reverse mode fills the (output elements x input elements) matrix by rows, which are contiguous
in a C-order ``.npy``; forward mode by columns, written a band of rows at a time. Either way the
file's bytes are those ``numpy.save`` would write for the in-memory Jacobian (reshaped to its
2-D form under ``--flatten``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

from jaccli.errors import FunctionError
from jaccli.report import progress
from jaccli.scale import chunks


@dataclass
class Streamed:
    """What streaming wrote, for the report (the array itself stays on disk)."""

    key: str
    path: str
    shape: tuple[int, ...]
    dtype: str  # computed in
    non_finite: tuple[int, int] = (0, 0)  # NaN and infinite entries
    compute_s: float = 0.0  # this rank's chunks, computing
    write_s: float = 0.0  # this rank's chunks, writing; then the flush and the rename
    chunks: int = 0
    label: str = ""
    fallbacks: list[str] = field(default_factory=list)


def _host(tensor: Any) -> Any:
    """A chunk as a numpy array (bfloat16 written as float32, as whole results are)."""
    import torch

    from jaccli.autodiff.trust import materialize

    tensor = materialize(tensor.detach())
    if tensor.dtype == torch.bfloat16:
        tensor = tensor.float()
    return tensor.cpu().numpy()


def _ranges(start: int, stop: int, size: int) -> list[tuple[int, int]]:
    return [(lo, min(lo + size, stop)) for lo in range(start, stop, size)]


def in_memory(block: chunks.BlockJacobian, engine: str, mode: str, chunk: int) -> Any:
    """The whole block as a tensor (output shape + input shape), computed ``chunk`` passes at a time
    into one preallocated matrix (no concatenation: the peak is the result plus one chunk)."""
    import torch

    if block.route is None:
        block.choose(chunks.routes(mode, engine))
    else:  # a steady-state run: from the start, forward pass included
        block.restart()
    passes = block.passes()
    matrix = torch.empty(block.n_out, block.n_in, dtype=block.dtype, device=block.x.device)
    forward = block.route.mode == "fwd"
    with progress.bar("jacobian (chunks)", passes if passes > chunk else 0) as shown:
        for lo, hi in _ranges(0, passes, chunk):
            part = block.chunk(lo, hi)
            if forward:
                matrix[:, lo:hi] = part.T
            else:
                matrix[lo:hi] = part
            shown.advance(hi - lo)
    return matrix.reshape(*block.info.output_shape, *block.info.input_shape)


class Chunked:
    """Every Jacobian block of a request, each in chunks (see :func:`in_memory`): a stand-in for
    :class:`jaccli.autodiff.routing.Router` when computing at once would not fit."""

    def __init__(
        self, blocks: dict[str, chunks.BlockJacobian], aux: dict, engine: str, mode: str, chunk: int
    ):
        self.blocks, self.aux, self.engine, self.mode, self.chunk = blocks, aux, engine, mode, chunk

    def __call__(self) -> dict[str, Any]:
        tree = {key: in_memory(b, self.engine, self.mode, self.chunk) for key, b in self.blocks.items()}
        tree.update(self.aux)
        return tree

    @property
    def label(self) -> str:
        return "; ".join(dict.fromkeys(b.route.label for b in self.blocks.values() if b.route)) or "?"

    @property
    def fallbacks(self) -> list[str]:
        return list(dict.fromkeys(f for b in self.blocks.values() for f in b.fallbacks))


def to_file(
    block: chunks.BlockJacobian,
    key: str,
    path: str,
    shape: tuple[int, ...],
    engine: str,
    mode: str,
    chunk: int,
    session: Any,
    sync: Callable[[], None],
) -> Streamed:
    """Write the block into ``path`` (declared ``shape``); this rank's share of the passes.

    Every rank reaches the same two exchanges (the temporary file's name, then the failure
    flags), whatever fails where, so that an error on one rank ends every rank without waiting
    and no file appears.
    """
    from jaccli.io.npyfile import NpyWriter
    from jaccli.scale.distributed import fill_shared_file

    report = Streamed(key, path, tuple(shape), "")
    writer, error, dtype = None, None, None
    try:
        first = block.choose(chunks.routes(mode, engine))
        report.label, report.fallbacks = block.route.label, block.fallbacks
        report.dtype = str(first.dtype).replace("torch.", "")
        dtype = _host(first[:0]).dtype
        if session.rank == 0:
            writer = NpyWriter(path, shape, block.n_in, dtype)
    except Exception as exc:  # noqa: BLE001 - every rank must still reach the exchanges
        error = exc
    writer, error = fill_shared_file(
        session,
        writer,
        error,
        writer.temp if writer else None,
        lambda temp: NpyWriter(path, shape, block.n_in, dtype, temp=temp),
        lambda writer: _fill(block, writer, session, chunk, report, sync),
    )
    failed, nan, inf = session.total([float(error is not None), *report.non_finite])
    report.non_finite = (int(nan), int(inf))
    if session.rank == 0 and writer is not None:
        if failed:
            writer.discard()
        else:
            start = time.perf_counter()
            writer.commit()
            report.write_s += time.perf_counter() - start
    if error is not None:
        raise error
    if failed:
        raise FunctionError(f"{int(failed)} other process(es) failed (see their errors); nothing was written")
    return report


def _fill(
    block: chunks.BlockJacobian,
    writer: Any,
    session: Any,
    chunk: int,
    report: Streamed,
    sync: Callable[[], None],
) -> None:
    import numpy as np

    lo, hi = session.share_of(block.passes())
    forward = block.route.mode == "fwd"
    nan = inf = 0
    with progress.bar(f"{report.key} -> {report.path}", hi - lo if session.rank == 0 else 0) as shown:
        for start, stop in _ranges(lo, hi, chunk):
            began = time.perf_counter()
            part = _host(block.chunk(start, stop))
            sync()
            middle = time.perf_counter()
            if part.dtype.kind == "f":
                nan += int(np.isnan(part).sum())
                inf += int(np.isinf(part).sum())
            if forward:
                writer.write(0, start, part.T)
            else:
                writer.write(start, 0, part)
            report.compute_s += middle - began
            report.write_s += time.perf_counter() - middle
            report.chunks += 1
            shown.advance(stop - start)
    report.non_finite = (nan, inf)
