"""Files of sparse results and patterns.

A sparse result ``-o J.npz`` is what ``scipy.sparse.save_npz`` writes (CSR; read it with
``scipy.sparse.load_npz``): the whole matrix, rows the flattened outputs and columns the
flattened differentiated inputs, row-major as with ``--flatten``. Several blocks (several
``--argnums``, several outputs, ``hessian.<i>.<j>``) are stored as one matrix, outputs
concatenated in key order down the rows and inputs in ``--argnums`` order across the columns;
the extra arrays ``keys``, ``row_offsets`` and ``column_offsets`` (key i is
``J[row_offsets[r]:row_offsets[r+1], column_offsets[c]:column_offsets[c+1]]``, see
``block_rows`` / ``block_columns``) name the blocks. With ``--batch-dim`` the per-sample
matrices are stacked block-diagonally, sample after sample (``samples`` says how many).

A pattern file (``jac sparsity -o P.npz``) is the same CSR layout of booleans, also readable
by ``scipy.sparse.load_npz``, with ``kind`` (jacobian or hessian) and the colourings found
(``column_colours``, ``row_colours`` or ``star_colours``).

Both carry jac's reproducibility record as an entry ``__jac__`` (JSON text in a 0-d string;
see :mod:`jaccli.report.record`), which ``scipy.sparse.load_npz`` and jac's readers ignore.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from typing import IO, Any

from jaccli.errors import InputError


@dataclass
class SparseResult:
    """What ``--sparse`` computed: one matrix and its named blocks."""

    matrix: Any  # csr (rows x columns), or block-diagonal over samples with --batch-dim
    keys: list[str]
    row_offsets: list[int]  # per output part (one sample)
    column_offsets: list[int]  # per input part
    block_rows: list[int]  # per key: index into row_offsets
    block_columns: list[int]  # per key: index into column_offsets
    colours: int
    mode: str  # forward, reverse, symmetric
    samples: int | None = None
    notes: list[str] = field(default_factory=list)

    def block(self, key: str) -> Any:
        """One key's block (for one sample: the first, under --batch-dim)."""
        i = self.keys.index(key)
        r, c = self.block_rows[i], self.block_columns[i]
        ro, co = self.row_offsets, self.column_offsets
        return self.matrix[ro[r] : ro[r + 1], co[c] : co[c + 1]]

    def selected(self, key: str) -> SparseResult:
        i = self.keys.index(key)
        r, c = self.block_rows[i], self.block_columns[i]
        ro, co = self.row_offsets, self.column_offsets
        if self.samples is None:
            matrix = self.block(key)
        else:  # the key's block of every sample, still block-diagonal
            import scipy.sparse as sp

            m, n = ro[-1], co[-1]
            parts = [
                self.matrix[s * m + ro[r] : s * m + ro[r + 1], s * n + co[c] : s * n + co[c + 1]]
                for s in range(self.samples)
            ]
            matrix = sp.block_diag(parts, format="csr")
        return SparseResult(
            matrix,
            [key],
            [0, ro[r + 1] - ro[r]],
            [0, co[c + 1] - co[c]],
            [0],
            [0],
            self.colours,
            self.mode,
            self.samples,
            self.notes,
        )


def _require_scipy() -> None:
    try:
        import scipy.sparse  # noqa: F401
    except ImportError:
        raise InputError("--sparse needs scipy: pip install 'jaccli[sparse]'") from None


def meta_arrays(result: SparseResult) -> dict[str, Any]:
    """The arrays beside scipy's (block names, colours, mode) in a result's .npz."""
    import numpy as np

    arrays = {
        "keys": np.array(result.keys, dtype=str),
        "row_offsets": np.array(result.row_offsets, dtype=np.int64),
        "column_offsets": np.array(result.column_offsets, dtype=np.int64),
        "block_rows": np.array(result.block_rows, dtype=np.int64),
        "block_columns": np.array(result.block_columns, dtype=np.int64),
        "colours": np.array(result.colours),
        "mode": np.array(result.mode),
    }
    if result.samples is not None:
        arrays["samples"] = np.array(result.samples)
    return arrays


def save_result(fh: IO[bytes], result: SparseResult, record: dict | None = None) -> None:
    import numpy as np

    m = result.matrix.tocsr()
    arrays = {
        "format": np.array("csr"),
        "shape": np.array(m.shape),
        "data": m.data,
        "indices": m.indices,
        "indptr": m.indptr,
        **meta_arrays(result),
    }
    _add_record(arrays, record)
    np.savez(fh, **arrays)


def _add_record(arrays: dict[str, Any], record: dict | None) -> None:
    """The reproducibility record, an entry scipy.sparse.load_npz ignores (jaccli.report.record)."""
    if record:
        from jaccli.io import outputs

        arrays[outputs.RECORD_KEY] = outputs.record_entry(record)


def document(result: SparseResult) -> dict[str, Any]:
    """JSON/YAML: per key, COO triplets (row, col, value) of its block."""
    doc: dict[str, Any] = {}
    for key in result.keys:
        if result.samples is None:
            blocks = [result.block(key)]
        else:
            sel = result.selected(key).matrix
            m, n = sel.shape[0] // result.samples, sel.shape[1] // result.samples
            blocks = [sel[s * m : (s + 1) * m, s * n : (s + 1) * n] for s in range(result.samples)]
        entries = []
        for b in blocks:
            coo = b.tocoo()
            order = (coo.row.astype("int64") * b.shape[1] + coo.col).argsort(kind="stable")
            entries.append(
                {
                    "row": coo.row[order].tolist(),
                    "col": coo.col[order].tolist(),
                    "data": coo.data[order].tolist(),
                }
            )
        first = blocks[0]
        item = {"format": "coo", "dtype": str(first.dtype), "shape": list(first.shape), "nnz": int(first.nnz)}
        if result.samples is None:
            item.update(entries[0])
        else:
            item["samples"] = entries
        doc[key] = item
    doc["colours"] = result.colours
    doc["mode"] = result.mode
    return doc


def write(
    path: str | None,
    fmt: str,
    result: SparseResult,
    stdout: IO[bytes],
    text: IO[str],
    record: dict | None = None,
) -> None:
    from jaccli.io import outputs

    def encode(fh: IO[bytes]) -> None:
        if fmt == "npz":
            save_result(fh, result, record)
        elif fmt in ("json", "yaml"):
            doc = document(result)
            if record:
                from jaccli.report.record import KEY

                doc[KEY] = record
            fh.write(outputs.dump_document(doc, fmt).encode("utf-8"))
        else:
            raise InputError(f"a sparse result is written as .npz, .json or .yaml, not .{fmt}")

    if fmt == "npy":
        raise InputError(
            "a sparse result is written as .npz (scipy.sparse.save_npz), .json or .yaml, not .npy"
        )
    if path is not None and path != "-":
        outputs.atomic_write(path, encode)
    elif fmt == "text":
        render(text, result)
    else:
        outputs.check_stream(stdout, fmt)
        buffer = io.BytesIO()
        encode(buffer)
        stdout.write(buffer.getvalue())
        stdout.flush()


def render(stream: IO[str], result: SparseResult) -> None:
    """Shape, stored entries, colours; small blocks in full."""
    import numpy as np

    for key in result.keys:
        b = result.block(key)
        m, n = b.shape
        density = b.nnz / (m * n) if m * n else 0.0
        sample = " (per sample; sample 0 shown)" if result.samples is not None else ""
        axes = (
            "input elements x input elements"
            if key.startswith("hessian")
            else "output elements x input elements"
        )
        stream.write(f"{key}: sparse {m} x {n} ({axes}){sample}, {b.nnz} stored ({density:.2%}), {b.dtype}\n")
        if m * n and m <= 12 and n <= 12:
            with np.printoptions(precision=6, suppress=True, linewidth=1000):
                for line in str(b.toarray()).splitlines():
                    stream.write(f"  {line}\n")
    stream.write(f"colours: {result.colours} ({result.mode})\n")
    for note in result.notes:
        stream.write(f"{note}\n")
    stream.flush()


# --- pattern files ------------------------------------------------------------------------------

COLOUR_KEYS = {"forward": "column_colours", "reverse": "row_colours", "symmetric": "star_colours"}


def save_pattern(
    path: str,
    kind: str,
    pattern: Any,
    colourings: dict[str, Any],
    fallbacks: list[str],
    record: dict | None = None,
) -> None:
    import numpy as np

    from jaccli.io import outputs

    p = pattern.tocsr()
    arrays = {
        "format": np.array("csr"),
        "shape": np.array(p.shape),
        "data": np.ones(p.nnz, bool),
        "indices": p.indices,
        "indptr": p.indptr,
        "kind": np.array(kind),
        "fallbacks": np.array(fallbacks, dtype=str),
    }
    for mode, colours in colourings.items():
        arrays[COLOUR_KEYS[mode]] = np.asarray(colours, np.int64)
    _add_record(arrays, record)
    outputs.atomic_write(path, lambda fh: np.savez(fh, **arrays))


def _text(array: Any) -> str:
    """A 0-d string array (scipy's save_npz stores bytes, jac's str)."""
    value = array.item()
    return value.decode("ascii", "replace") if isinstance(value, bytes) else str(value)


@dataclass
class GivenPattern:
    matrix: Any
    kind: str | None
    colourings: dict[str, Any]


def load_pattern(path: str, option: str = "--sparsity") -> GivenPattern:
    """A pattern from ``path``: any scipy.sparse .npz (save_npz) or jac's own; pickles refused."""
    import os

    import numpy as np
    import scipy.sparse as sp

    if not os.path.isfile(path):
        raise InputError(f"{option} {path}: no such file; write one with 'jac sparsity FUNC -p X -o {path}'")
    import zipfile

    if not zipfile.is_zipfile(path):
        raise InputError(
            f"{option} {path}: not an .npz archive; write a pattern with scipy.sparse.save_npz or "
            "'jac sparsity FUNC -p X -o P.npz'"
        )
    try:
        with np.load(path, allow_pickle=False) as z:
            names = set(z.files)
            fmt = _text(z["format"]) if "format" in names else None
            shape = tuple(int(s) for s in z["shape"]) if "shape" in names else None
            if fmt is None or shape is None or len(shape) != 2:
                raise ValueError("it holds no 'format' and 'shape' of a scipy.sparse matrix")
            if fmt in ("csr", "csc"):
                cls = sp.csr_matrix if fmt == "csr" else sp.csc_matrix
                data = z["data"] if "data" in names else np.ones(len(z["indices"]), bool)
                matrix = cls((data, z["indices"], z["indptr"]), shape=shape)
            elif fmt == "coo":
                row, col = (z["row"], z["col"]) if "row" in names else z["coords"]
                matrix = sp.coo_matrix((z["data"], (row, col)), shape=shape)
            else:
                raise ValueError(f"format {fmt!r}; use csr, csc or coo")
            kind = _text(z["kind"]) if "kind" in names else None
            colourings = {m: np.asarray(z[k], np.int64) for m, k in COLOUR_KEYS.items() if k in names}
        matrix = sp.csr_matrix(matrix)
        matrix.data = matrix.data != 0
        matrix = sp.csr_matrix(matrix, dtype=bool)
        matrix.eliminate_zeros()
        matrix.sort_indices()
    except InputError:
        raise
    except Exception as exc:
        raise InputError(
            f"{option} {path}: not a sparsity pattern ({exc}); write one with scipy.sparse.save_npz or "
            "'jac sparsity FUNC -p X -o P.npz'"
        ) from None
    return GivenPattern(matrix, kind, colourings)
