"""A ``.npy`` file written a piece at a time, for results larger than memory.

The file is created at its full size (sparse: no disk is used until written) under a temporary
name beside the target, filled with blocks of rows or columns of the (rows x columns) matrix,
and renamed into place at the end, as :func:`jaccli.io.outputs.atomic_write` does for whole
results: a reader sees no file or the complete one. Several processes may write disjoint
blocks into the same temporary file (``torchrun``): one creates it, the others open it by name.

Peak memory stays bounded: pages of a memory map that have been written count toward the
process's resident memory until they are unmapped, so each block is written through maps of
at most ``BAND_BYTES`` of the file, each unmapped before the next; the kernel's page cache
takes the data from there.
"""

from __future__ import annotations

import io
import os
import shutil
from typing import Any

from jaccli.errors import InputError, human_size
from jaccli.io.outputs import replace_into

BAND_BYTES = 64 * 2**20


def header(shape: tuple[int, ...], dtype: Any) -> bytes:
    """The ``.npy`` header (format 1.0) of a C-order array: the same bytes numpy.save writes."""
    import numpy as np

    buffer = io.BytesIO()
    fields = {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False, "shape": shape}
    np.lib.format.write_array_header_1_0(buffer, fields)
    return buffer.getvalue()


def check_room(path: str, n_bytes: int) -> None:
    """A file of ``n_bytes`` must fit on the disk holding ``path`` (checked before any work)."""
    folder = os.path.dirname(os.path.abspath(path))
    free = shutil.disk_usage(folder).free
    if n_bytes > free:
        raise InputError(
            f"-o {path}: the result needs {human_size(n_bytes)} but the disk holding {folder} has "
            f"{human_size(free)} free; write it elsewhere, or compute less (--select, --argnums, jac jvp/vjp)"
        )


class NpyWriter:
    """The temporary file of one ``.npy`` matrix being written in blocks.

    ``shape`` is what the file declares (the Jacobian's shape, or its 2-D form); the blocks
    address it as the matrix ``rows x columns`` (the same bytes in C order).
    """

    def __init__(self, path: str, shape: tuple[int, ...], columns: int, dtype: Any, temp: str | None = None):
        import numpy as np

        self.path, self.shape, self.columns = path, tuple(shape), columns
        self.dtype = np.dtype(dtype)
        self.offset = len(header(self.shape, self.dtype))
        self.temp = temp or self._create()

    def _create(self) -> str:
        """A temporary file beside the target, with the header and its full (sparse) size."""
        import math

        from jaccli.io import tempfiles

        try:
            fd, temp = tempfiles.create(self.path)  # pending until renamed: any end removes it
        except OSError as exc:
            raise InputError(f"cannot write {self.path}: {exc.strerror or exc}; nothing was changed") from exc
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(header(self.shape, self.dtype))
                fh.truncate(self.offset + math.prod(self.shape) * self.dtype.itemsize)
        except BaseException:
            tempfiles.discard(temp)
            raise
        return temp

    def write(self, row: int, column: int, block: Any) -> None:
        """Put ``block`` (a 2-D array) at ``[row:, column:]`` of the matrix, a band of rows at a time."""
        import numpy as np

        block = np.ascontiguousarray(block, dtype=self.dtype)
        if block.size == 0:
            return
        row_bytes = self.columns * self.dtype.itemsize
        band = max(1, BAND_BYTES // max(row_bytes, 1))
        width = block.shape[1]
        for start in range(0, block.shape[0], band):
            part = block[start : start + band]
            mapped = np.memmap(
                self.temp,
                dtype=self.dtype,
                mode="r+",
                offset=self.offset + (row + start) * row_bytes,
                shape=(part.shape[0], self.columns),
            )
            mapped[:, column : column + width] = part
            del mapped  # unmaps: written pages leave this process's resident memory

    def commit(self) -> None:
        """Flush to disk and rename into place."""
        with open(self.temp, "rb+") as fh:
            os.fsync(fh.fileno())
        replace_into(self.temp, self.path)

    def discard(self) -> None:
        from jaccli.io import tempfiles

        tempfiles.discard(self.temp)
