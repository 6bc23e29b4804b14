"""Pictures of Jacobians: a heatmap in the terminal, a summary for large ones, and ``--plot``.

A Jacobian (or Hessian) block is read as its flattened matrix, rows the output's elements
and columns the input's, both row-major (as ``--flatten`` writes it). Each entry falls in a
signed level: ``+k`` or ``-k`` for k = 1..9, where level k covers |entry| in
((k-1)/9, k/9] of the largest |entry|, and 0 for an exact zero only, so structural zeros
never hide among small entries. The terminal picture draws the levels as coloured cells
when standard output is a colour terminal, and as the characters ``+k``, ``-k`` and ``.``
otherwise (``NO_COLOR``, pipes, files), which keeps it greppable and free of escapes.

Nothing here imports matplotlib unless ``--plot`` asks for it.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any, Callable

from jaccli.errors import InputError

LEVELS = 9
HEATMAP_MAX = 40  # rows and columns up to which the terminal shows every entry
GRID_MAX = 32  # the summary's coarse grid has at most this many blocks a side
LARGEST = 5  # entries the summary lists
PLOT_SUFFIXES = (".png", ".svg", ".pdf")
PLOT_COMMANDS = ("jacfwd", "jacrev", "jacobian", "hessian")
MISSING_MATPLOTLIB = "--plot needs matplotlib: pip install 'jaccli[plot]'"

# Ends of matplotlib's RdBu_r, so the terminal and --plot tell signs apart the same way.
_NEGATIVE, _WHITE, _POSITIVE = (33, 102, 172), (247, 247, 247), (178, 24, 43)
_MAGNITUDE = (63, 0, 125)  # the summary's grid: magnitude only, one hue


@dataclass(frozen=True)
class Axes:
    """How a Jacobian-like result reads as a matrix: whose elements its rows and columns are."""

    rows: str  # "output", "output.a", "primal 0" (a Hessian's rows)
    row_shape: tuple[int, ...]
    cols: str
    col_shape: tuple[int, ...]

    @property
    def shape(self) -> tuple[int, int]:
        return math.prod(self.row_shape), math.prod(self.col_shape)

    def describe(self) -> str:
        """One line on what row r and column c are, with an example where shapes have 2+ dims."""
        parts = [
            f"{side} are the elements of {name} {_shape(shape)}" + _example(word, name, shape)
            for side, word, name, shape in (
                ("rows", "row", self.rows, self.row_shape),
                ("columns", "column", self.cols, self.col_shape),
            )
        ]
        return "; ".join(parts) + ", row-major"

    def position(self, row: int, col: int) -> str:
        """Entry (row, col) named by the multi-indices it stands for."""
        return f"d {self.rows}{_index(row, self.row_shape)} / d {self.cols}{_index(col, self.col_shape)}"


def matrix_axes(
    layout: list[tuple[str, Any]],
    rename: Callable[[str], str],
    primals: list[Any],
    argnums: int | tuple[int, ...],
    names: list[str] | None,
) -> dict[str, Axes]:
    """The Axes of every Jacobian and Hessian key in a command's layout (known before computing)."""
    args = argnums if isinstance(argnums, tuple) else (argnums,)

    def label(index: int) -> str:
        return f"parameter {names[index]}" if names else f"primal {index}"

    axes = {}
    for key, info in layout:
        if info is not None:
            axes[rename(key)] = Axes(
                info.output_key, info.output_shape, label(info.input_index), info.input_shape
            )
        elif key == "hessian" or key.startswith("hessian."):
            i, j = (args[int(p)] for p in key.split(".")[1:]) if "." in key else (args[0], args[0])
            axes[rename(key)] = Axes(label(i), tuple(primals[i].shape), label(j), tuple(primals[j].shape))
    return axes


def levels(matrix: Any, scale: float) -> Any:
    """Signed levels -9..9 of each entry against ``scale``; 0 only where the entry is exactly 0."""
    import numpy as np

    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = np.abs(matrix) / scale if scale > 0 else np.zeros(matrix.shape)
    magnitude = np.clip(np.ceil(np.nan_to_num(ratio, posinf=1.0) * LEVELS), 1, LEVELS).astype(int)
    return np.where(matrix == 0, 0, np.sign(np.nan_to_num(matrix)).astype(int) * magnitude)


def picture(matrix: Any, axes: Axes, colour: bool, width: int) -> list[Any]:
    """The lines (rich Text) drawing a matrix: every entry when it fits, else a summary."""
    import numpy as np

    matrix = np.asarray(matrix).reshape(axes.shape)
    if matrix.dtype.itemsize < 4:  # float16 sums overflow; float32 stays as is, for memory's sake
        matrix = matrix.astype(np.float32)
    rows, cols = matrix.shape
    label_width = len(str(max(rows - 1, 0)))
    if rows <= HEATMAP_MAX and cols <= min(HEATMAP_MAX, (width - label_width - 1) // 2):
        return _heatmap(matrix, axes, colour)
    return _summary(matrix, axes, colour)


def _heatmap(matrix: Any, axes: Axes, colour: bool) -> list[Any]:
    import numpy as np

    from jaccli.report.styled import Text

    scale = _largest(matrix)
    grid = levels(matrix, scale)
    nonfinite = ~np.isfinite(matrix)
    lines = [Text(f"heatmap: {axes.describe()}")]
    lines += _frame([[_cell(int(v), bad, colour) for v, bad in zip(r, b)] for r, b in zip(grid, nonfinite)])
    lines.append(_legend(scale, colour, signed=True, bad=bool(nonfinite.any())))
    return lines


def _summary(matrix: Any, axes: Axes, colour: bool) -> list[Any]:
    import numpy as np

    from jaccli.report.styled import Text

    rows, cols = matrix.shape
    zeros = int((matrix == 0).sum())
    finite = np.isfinite(matrix)
    scale = _largest(matrix)
    bad = f", {int((~finite).sum())} NaN or infinite" if not finite.all() else ""
    row_edges, col_edges = _edges(rows), _edges(cols)
    grid = levels(_block_max(np.where(finite, np.abs(matrix), 0.0), row_edges, col_edges), scale)
    size = f"{math.ceil(rows / (len(row_edges) - 1))} x {math.ceil(cols / (len(col_edges) - 1))}"
    lines = [
        Text(
            f"summary: {rows} x {cols} matrix, Frobenius norm {_num(np.linalg.norm(matrix), 6)}, "
            f"max |entry| {_num(scale, 6)}, {zeros} of {matrix.size} entries exactly zero "
            f"({100 * zeros / matrix.size:.1f}%){bad}"
        ),
        Text(axes.describe()),
        Text(
            f"coarse grid: {len(row_edges) - 1} x {len(col_edges) - 1} blocks of up to {size} entries, "
            "each shown by its largest |entry| (labels: a block's first row and column)"
        ),
    ]
    cells = [[_cell(int(v), False, colour, signed=False) for v in row] for row in grid]
    lines += _frame(cells, row_edges, col_edges, every=8)
    lines.append(_legend(scale, colour, signed=False, bad=False))
    lines.append(Text("largest |entries|:"))
    magnitude = np.where(finite, np.abs(matrix), -1.0).ravel()
    count = min(LARGEST, int((magnitude > 0).sum()))
    top = np.argpartition(-magnitude, count - 1)[:count] if count else []
    for flat in sorted(top, key=lambda k: (-magnitude[k], k)):
        r, c = divmod(int(flat), cols)
        lines.append(Text(f"  [{r}, {c}] = {_num(matrix[r, c], 6)}   {axes.position(r, c)}"))
    return lines


def _frame(
    cells: list[list[Any]], row_labels: Any = None, col_labels: Any = None, every: int = 5
) -> list[Any]:
    """Rows of two-character cells under column labels, each row after its label."""
    from jaccli.report.styled import Text

    n_rows, n_cols = len(cells), len(cells[0])
    row_labels = list(range(n_rows)) if row_labels is None else [int(v) for v in row_labels]
    col_labels = list(range(n_cols)) if col_labels is None else [int(v) for v in col_labels]
    pad = len(str(max(row_labels)))
    header = ""
    for c in range(0, n_cols, every):  # each label ends over the second character of its cell
        label = str(col_labels[c])
        header = header.ljust(pad + 3 + 2 * c - len(label)) + label
    lines = [Text(header)]
    for label, row in zip(row_labels, cells):
        line = Text(f"{label:>{pad}} ")
        for text, style in row:
            line.append(text, style)
        lines.append(line)
    return lines


def _cell(level: int, bad: bool, colour: bool, signed: bool = True) -> tuple[str, Any]:
    """Two characters for one entry (or for one block of the summary, by magnitude alone)."""
    if bad:
        return (" !", "bold magenta") if colour else (" !", None)
    if level == 0:
        return (" ·", "dim") if colour else (" .", None)
    if colour:
        end = _MAGNITUDE if not signed else _POSITIVE if level > 0 else _NEGATIVE
        return "  ", _background(end, abs(level))
    return f"{'' if not signed else '+' if level > 0 else '-'}{abs(level)}".rjust(2), None


def _background(end: tuple[int, int, int], level: int) -> Any:
    """Level 1 is a light tint (never the white of nothing), level 9 the full colour."""
    from rich.color import Color
    from rich.style import Style

    t = 0.15 + 0.85 * (level - 1) / (LEVELS - 1)
    r, g, b = (round(w + (e - w) * t) for w, e in zip(_WHITE, end))
    return Style(bgcolor=Color.from_rgb(r, g, b))


def _legend(scale: float, colour: bool, signed: bool, bad: bool) -> Any:
    """What the cells mean: level k holds |entry| in ((k-1)/9, k/9] of the largest |entry|."""
    from jaccli.report.styled import Text

    what = "|entry|" if signed else "block's largest |entry|"
    zero = "exactly zero" if signed else "all zero"
    nonfinite = "; ! NaN or infinite" if bad else ""
    if not colour:
        marks = "+k positive, -k negative, |entry|" if signed else "k: a block whose largest |entry| is"
        return Text(f"levels: {marks} in ((k-1)/9, k/9] x {_num(scale)} = max |entry|; . {zero}{nonfinite}")
    legend = Text(f"scale: {'-' + _num(scale) if signed else '0'} ")
    for level in [*range(-LEVELS, 0), 0, *range(1, LEVELS + 1)] if signed else range(1, LEVELS + 1):
        legend.append(*_cell(level, False, True, signed))
    high = ("+" if signed else "") + _num(scale)
    step = _num(scale / LEVELS)
    return legend.append(f"  {high}   (each colour a step of {step} in the {what}; · {zero}{nonfinite})")


def _largest(matrix: Any) -> float:
    import numpy as np

    finite = np.abs(matrix[np.isfinite(matrix)])
    return float(finite.max()) if finite.size else 0.0


def _edges(n: int) -> Any:
    """Block boundaries along one side: at most GRID_MAX blocks of nearly equal size."""
    import numpy as np

    return np.unique(np.linspace(0, n, min(n, GRID_MAX) + 1).round().astype(int))


def _block_max(values: Any, row_edges: Any, col_edges: Any) -> Any:
    import numpy as np

    return np.maximum.reduceat(np.maximum.reduceat(values, row_edges[:-1], axis=0), col_edges[:-1], axis=1)


def _num(value: float, digits: int = 4) -> str:
    return f"{value:.{digits}g}"


def _shape(shape: tuple[int, ...]) -> str:
    return "(" + ", ".join(map(str, shape)) + ("," if len(shape) == 1 else "") + ")"


def _index(flat: int, shape: tuple[int, ...]) -> str:
    import numpy as np

    return "[" + ", ".join(str(int(i)) for i in np.unravel_index(flat, shape)) + "]" if shape else "[()]"


def _example(word: str, name: str, shape: tuple[int, ...]) -> str:
    if len(shape) < 2:
        return ""
    last = math.prod(shape) - 1
    return f" ({word} {last} is {name}{_index(last, shape)})"


# --plot: a matplotlib figure, one panel per Jacobian-like result.


def check_plot(path: str, command: str, batch_dim: int | None) -> None:
    """Everything --plot needs, checked before any work: command, suffix, folder, matplotlib."""
    from jaccli.io.outputs import check_destination

    if command not in PLOT_COMMANDS:
        raise InputError(f"--plot is for {', '.join(PLOT_COMMANDS)}; {command} gives no Jacobian to draw")
    if batch_dim is not None:
        raise InputError("--plot does not take --batch-dim yet; plot one sample (leave --batch-dim out)")
    suffix = os.path.splitext(path)[1].lower()
    if suffix not in PLOT_SUFFIXES:
        raise InputError(
            f"--plot {path}: cannot tell the image format from the suffix {suffix or '(none)'!r}; "
            f"use one of {', '.join(PLOT_SUFFIXES)}"
        )
    check_destination(path, "--plot")
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise InputError(MISSING_MATPLOTLIB) from None


def write_plot(path: str, results: dict[str, Any], axes: dict[str, Axes]) -> None:
    """One panel per Jacobian-like result: a diverging map centred on 0, exact zeros in grey."""
    import matplotlib
    import numpy as np

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    from jaccli.io.outputs import atomic_write

    keys = [k for k in results if k in axes and results[k].size]  # the plan stage made sure of one
    ncols = min(len(keys), 2)
    nrows = math.ceil(len(keys) / ncols)
    figure = Figure(figsize=(6 * ncols, 5 * nrows), layout="constrained")
    cmap = matplotlib.colormaps["RdBu_r"].with_extremes(bad="#b0b0b0")
    for n, key in enumerate(keys):
        ax = figure.add_subplot(nrows, ncols, n + 1)
        matrix = np.asarray(results[key], dtype=np.float64).reshape(axes[key].shape)
        limit = _largest(matrix) or 1.0
        shown = np.ma.masked_where(matrix == 0, matrix)
        image = ax.imshow(shown, cmap=cmap, vmin=-limit, vmax=limit, interpolation="nearest", aspect="auto")
        figure.colorbar(image, ax=ax, label="entry (grey: exactly 0)")
        a = axes[key]
        ax.set_title(f"{key}  {matrix.shape[0]} x {matrix.shape[1]}  (shape {results[key].shape})")
        ax.set_ylabel(f"row: element of {a.rows} {_shape(a.row_shape)}, row-major")
        ax.set_xlabel(f"column: element of {a.cols} {_shape(a.col_shape)}, row-major")
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        ax.yaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    fmt = os.path.splitext(path)[1].lower().lstrip(".")
    atomic_write(path, lambda fh: figure.savefig(fh, format=fmt, dpi=100))
