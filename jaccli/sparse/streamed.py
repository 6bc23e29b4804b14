"""Sparse results written a colour block at a time, on one process or sharded over torchrun's.

In memory, ``--sparse`` holds the compressed products of every colour (colours x rows of the
product), the stored values, and their copies on the way to the file. When that does not fit
in ``--max-memory`` (default: 80% of the memory free now) and the result goes to ``-o J.npz``,
or under ``torchrun``, the colours are computed a block at a time instead:

- the stored values are a ``.npy`` of ``nnz`` items in a temporary file beside the target; each
  block of colours gives the entries it recovers (the positions in CSR order are known from the
  pattern before anything runs: :attr:`jaccli.sparse.compressed.Plan.take`), which are written
  into that file through memory maps of at most ``BAND_BYTES``, each unmapped before the next,
  so the peak is one block's products plus the pattern, not the whole result;
- under torchrun each rank computes a contiguous share of the colours and writes its entries
  into the same file (rank 0 creates it and tells the others its name, as
  :mod:`jaccli.scale.streaming` does for dense Jacobians); a sum over ranks of a failure flag then
  tells every rank whether all succeeded;
- rank 0 then writes the ``.npz`` (atomically, as every output): the small arrays, the
  pattern's ``indices`` and ``indptr``, and ``data`` copied from the temporary file in pieces.
  The file holds the same arrays ``scipy.sparse.save_npz`` would write for the in-memory result.
"""

from __future__ import annotations

import shutil
import time
from typing import Any, Callable

from jaccli.errors import FunctionError, InputError, human_size
from jaccli.report import progress

BAND_BYTES = 64 * 2**20


def product_rows(plan: Any) -> int:
    """Rows of one colour's product: output elements (forward), input elements otherwise."""
    from jaccli.sparse.compressed import FORWARD

    m, n = plan.pattern.shape
    return m if plan.mode == FORWARD else n


def in_memory_bytes(plan: Any, m: int, n: int, itemsize: int, samples: int = 1) -> int:
    """Peak estimate of computing in memory: every colour's product and the transform's
    workspace for one block of colours, the values, their host copy and the CSR result."""
    from jaccli.sparse.compressed import work_per_colour

    products = plan.count * product_rows(plan) * itemsize * samples
    values = plan.pattern.nnz * itemsize * samples
    return products + work_per_colour(m, n, itemsize) + 3 * values


def colour_chunk(plan: Any, m: int, n: int, itemsize: int, allowed: int, asked: int | None) -> int:
    """Colours per block when streaming: as many as fit in ``allowed`` (at least one)."""
    from jaccli.sparse.compressed import work_per_colour

    if asked:
        return max(1, min(asked, plan.count or 1))
    per = product_rows(plan) * itemsize + work_per_colour(m, n, itemsize)
    return max(1, min(plan.count or 1, allowed // max(per, 1)))


def _order(plan: Any) -> tuple[Any, Any]:
    """The stored entries grouped by the colour whose product holds them: (positions in CSR
    order, ascending within each colour; per colour its slice bounds into them)."""
    import numpy as np

    take = plan.take.numpy()
    colour = take // max(product_rows(plan), 1)
    order = np.argsort(colour, kind="stable")
    bounds = np.searchsorted(colour[order], np.arange(plan.count + 1))
    return order, bounds


def write(
    engine: Any,
    primals: Any,
    plan: Any,
    path: str,
    meta: Any,
    chunk: int,
    session: Any,
    sync: Callable[[], None],
    command: str = "jacobian",
    record: dict | None = None,
) -> dict:
    """Compute this rank's colours into the values file; rank 0 writes ``path`` (.npz).

    Every rank reaches the same exchanges (the temporary file's name, then the failure flags)
    whatever fails where, so that an error on one rank ends every rank and no file appears.
    Returns a report: times, blocks, non-finite counts, the values' dtype.
    """
    import numpy as np

    from jaccli.io.npyfile import NpyWriter
    from jaccli.scale.distributed import fill_shared_file

    report = {"compute_s": 0.0, "write_s": 0.0, "chunks": 0, "non_finite": (0, 0), "dtype": ""}
    report["command"] = command
    nnz = plan.pattern.nnz
    lo, hi = session.share_of(plan.count)
    blocks = [(c, min(c + chunk, hi)) for c in range(lo, hi, chunk)]
    writer, error, first = None, None, None
    try:
        if blocks:  # this rank's first block, before the exchange: it says the values' dtype
            first = _block(engine, primals, blocks[0], report, sync)
        dtype = _host_dtype(first if first is not None else primals[engine.argnums[0]])
        report["dtype"] = str(dtype)
        if session.rank == 0:
            writer = NpyWriter(path + ".data", (nnz,), 1, dtype)
    except Exception as exc:  # noqa: BLE001 - every rank must still reach the exchanges
        error = exc
    writer, error = fill_shared_file(
        session,
        writer,
        error,
        (writer.temp, str(writer.dtype)) if writer else None,
        lambda temp: NpyWriter(path + ".data", (nnz,), 1, np.dtype(temp[1]), temp=temp[0]),
        lambda writer: _fill(engine, primals, plan, writer, blocks, first, report, sync, session.rank == 0),
    )
    failed, nan, inf = session.total([float(error is not None), *report["non_finite"]])
    report["non_finite"] = (int(nan), int(inf))
    if session.rank == 0 and writer is not None:
        try:
            if not failed:
                start = time.perf_counter()
                _save(path, meta, plan.pattern, writer, record)
                report["write_s"] += time.perf_counter() - start
        finally:
            writer.discard()
    if error is not None:
        raise error
    if failed:
        raise FunctionError(f"{int(failed)} other process(es) failed (see their errors); nothing was written")
    return report


def _host_dtype(tensor: Any) -> Any:
    """The numpy dtype the values are written in (bfloat16 as float32, as in memory)."""
    from jaccli.pipeline.delivery import host_array

    return host_array(tensor.reshape(-1)[:0], "the sparse values")[0].dtype


def _block(engine: Any, primals: Any, block: tuple[int, int], report: dict, sync: Callable[[], None]) -> Any:
    from jaccli.autodiff.transforms import guarded

    began = time.perf_counter()
    colours = list(range(*block))
    products = guarded(lambda: engine._products(list(primals), colours), report["command"])
    sync()
    report["compute_s"] += time.perf_counter() - began
    return products


def _fill(
    engine: Any,
    primals: Any,
    plan: Any,
    writer: Any,
    blocks: list,
    first: Any,
    report: dict,
    sync: Callable[[], None],
    shown_here: bool,
) -> None:
    import numpy as np
    import torch

    from jaccli.pipeline.delivery import host_array

    order, bounds = _order(plan)
    take = plan.take.numpy()
    rows = product_rows(plan)
    nan = inf = 0
    total = sum(b - a for a, b in blocks)
    with progress.bar("sparse colours -> file", total if shown_here and len(blocks) > 1 else 0) as shown:
        for i, (a, b) in enumerate(blocks):
            products = first if i == 0 else _block(engine, primals, (a, b), report, sync)
            began = time.perf_counter()
            positions = order[bounds[a] : bounds[b]]
            if positions.size:
                where = torch.from_numpy(take[positions] - a * rows)
                values = torch.index_select(products.reshape(-1), 0, where.to(products.device))
                values = host_array(values, "the sparse values")[0].astype(writer.dtype, copy=False)
                if values.dtype.kind in "fc":
                    nan += int(np.isnan(values).sum())
                    inf += int(np.isinf(values).sum())
                _scatter(writer, positions, values)
            del products
            report["write_s"] += time.perf_counter() - began
            report["chunks"] += 1
            shown.advance(b - a)
    report["non_finite"] = (nan, inf)


def _scatter(writer: Any, positions: Any, values: Any) -> None:
    """``data[positions] = values`` in the temporary file, through maps of at most BAND_BYTES."""
    import numpy as np

    order = np.argsort(positions, kind="stable")
    positions, values = positions[order], values[order]
    band = max(1, BAND_BYTES // writer.dtype.itemsize)
    nnz = writer.shape[0]
    start = 0
    while start < len(positions):
        lo = int(positions[start])
        hi = min(nnz, lo + band)
        stop = int(np.searchsorted(positions, hi, side="left"))
        mapped = np.memmap(
            writer.temp, dtype=writer.dtype, mode="r+", offset=writer.offset + lo * writer.dtype.itemsize,
            shape=(hi - lo,),
        )  # fmt: skip
        mapped[positions[start:stop] - lo] = values[start:stop]
        mapped.flush()
        del mapped  # unmaps: the written pages leave this process's resident memory
        start = stop


def _save(path: str, meta: Any, pattern: Any, writer: Any, record: dict | None = None) -> None:
    """The .npz: what save_npz writes (and jac's block names, the reproducibility record),
    ``data`` copied from the file."""
    import zipfile

    import numpy as np

    from jaccli.io import outputs
    from jaccli.sparse.files import meta_arrays

    arrays = {
        "format": np.array("csr"),
        "shape": np.array(pattern.shape),
        "indices": pattern.indices,
        "indptr": pattern.indptr,
        **meta_arrays(meta),
    }
    if record:
        arrays[outputs.RECORD_KEY] = outputs.record_entry(record)

    def encode(fh: Any) -> None:
        with zipfile.ZipFile(fh, mode="w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
            for name in ("format", "shape"):
                with zf.open(f"{name}.npy", "w", force_zip64=True) as member:
                    np.lib.format.write_array(member, arrays.pop(name), allow_pickle=False)
            with zf.open("data.npy", "w", force_zip64=True) as member, open(writer.temp, "rb") as source:
                shutil.copyfileobj(source, member, 16 * 2**20)
            for name, array in arrays.items():
                with zf.open(f"{name}.npy", "w", force_zip64=True) as member:
                    np.lib.format.write_array(member, np.asarray(array), allow_pickle=False)

    outputs.atomic_write(path, encode)


def refuse(request: Any, why: str) -> None:
    """Streaming (or torchrun) needs the result to go to -o PATH.npz, whole."""
    if request.out in (None, "-") or not str(request.out).endswith(".npz"):
        raise InputError(
            f"{why}, --sparse writes the result a colour block at a time into -o PATH.npz; add one"
        )
    if request.batch_dim is not None:
        raise InputError(f"{why}, --sparse writes one matrix: leave out --batch-dim (one sample at a time)")
    if request.select is not None:
        raise InputError(f"{why}, --sparse writes every block into one file: leave out --select")


def note(plan: Any, chunk: int, path: str, m: int, n: int, itemsize: int, allowed: int, where: str) -> str:
    need = in_memory_bytes(plan, m, n, itemsize)
    return (
        f"memory: streamed to {path} in blocks of {chunk} of {plan.count} colours (computing it in memory "
        f"takes about {human_size(need)}, more than {where}, {human_size(allowed)})"
    )
