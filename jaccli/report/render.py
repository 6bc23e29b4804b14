"""What people read: results as text in the numpy style, and the timing table.

Results go to standard output; the timing table and notes go to standard error, so
pipelines stay clean. Styles (bold, colour) reach terminals only, and none when NO_COLOR is set.
"""

from __future__ import annotations

from typing import IO, Any

from jaccli.report.timing import Timings


def console_for(stream: IO[str]) -> Any:
    """A rich Console on ``stream``: no escape codes at all for a pipe, a file or NO_COLOR.

    rich already leaves non-terminals plain, but under NO_COLOR it drops colours only and keeps
    bold and dim; https://no-color.org asks for plain text, so styling goes off entirely.
    """
    import os

    from rich.console import Console

    from jaccli.io.streams import raise_broken_pipe

    plain = bool(os.environ.get("NO_COLOR"))
    console = Console(file=stream, highlight=False, soft_wrap=True, color_system=None if plain else "auto")
    console.on_broken_pipe = raise_broken_pipe  # rich would exit with status 1: end as cat does
    return console


def jacobian_note(info: Any, flattened: bool) -> str:
    """One line on what a Jacobian's shape means, the question 2-D inputs always raise."""
    rows, cols = info.matrix_shape
    out_shape, in_shape = _shape(info.output_shape), _shape(info.input_shape)
    if flattened:
        return (
            f"flattened: {rows} elements of {info.output_key} {out_shape} (rows) x {cols} "
            f"elements of {info.input_name} {in_shape} (columns), both in row-major order"
        )
    return (
        f"shape = {info.output_key} {out_shape} + {info.input_name} {in_shape}: "
        f"entry [i..., j...] is d out[i...] / d in[j...]; as a matrix, {rows} x {cols} (--flatten)"
    )


def render_text(
    stream: IO[str],
    results: dict[str, Any],
    notes: dict[str, str],
    dtypes: dict[str, str],
    axes: dict[str, Any] | None = None,
) -> None:
    """Each result: its key, shape and dtype, a note where one helps, the values, then for a
    Jacobian or Hessian (``axes`` says which, and how it reads as a matrix) its picture.

    A pipe or a file gets plain text written directly (rich is not even imported); a terminal
    gets it through rich, with styles unless NO_COLOR is set."""
    from jaccli.io import streams

    if streams.is_plain(stream):
        lines = _result_lines(results, notes, dtypes, axes or {}, False, max(streams.plain_width(), 80))
        streams.write_text(stream, "".join(f"{line}\n" for line in lines))
        return
    console = console_for(stream)
    colour = console.color_system is not None
    for line in _result_lines(results, notes, dtypes, axes or {}, colour, max(console.width, 80)):
        console.print(line, markup=False)


def _result_lines(
    results: dict[str, Any],
    notes: dict[str, str],
    dtypes: dict[str, str],
    axes: dict[str, Any],
    colour: bool,
    width: int,
) -> list[Any]:
    """The lines, each a string or a :class:`jaccli.report.styled.Text`."""
    import numpy as np

    from jaccli.report.pictures import picture
    from jaccli.report.styled import Text

    lines: list[Any] = []
    for n, (key, array) in enumerate(results.items()):
        if n:
            lines.append("")
        dtype = dtypes.get(key, str(array.dtype))
        lines.append(Text(key, "bold").append(f"  shape {_shape(array.shape)}  {dtype}"))
        if key in notes:
            lines.append(Text(notes[key], "dim"))
        lines.append(np.array2string(array, max_line_width=width, threshold=1000, edgeitems=3))
        shape = axes[key].shape if key in axes else (0, 0)
        if array.size == shape[0] * shape[1] > 1:  # not under --batch-dim, nor for a single number
            lines.append("")
            lines.extend(picture(array, axes[key], colour, width))
    return lines


def wrote_line(keys: list[str], path: str, most: int = 8) -> str:
    """``wrote 3 result(s) (output, jvp, aux) to out.npz``; many keys are summarised."""
    if len(keys) <= most:
        shown = ", ".join(keys)
    else:
        shown = f"{', '.join(keys[: most - 2])}, ..., {keys[-1]}"
    return f"wrote {len(keys)} result(s) ({shown}) to {path}"


def render_timings(stream: IO[str], timings: Timings) -> None:
    """The timing table, in plain text: formatted by hand rather than by rich, whose import
    costs more than a one-shot run's derivative (benchmarks/run.py oneshot)."""
    rows = [("phase", "time", "min", "max", "runs")]
    for phase in timings.phases:
        stats = phase.stats() if phase.is_series else None
        if phase.is_series and stats is None:
            rows.append((phase.name, "not repeated" if phase.skipped else "-", "", "", "0"))
        elif phase.is_series:
            rows.append(
                (
                    phase.name,
                    duration(stats["median"]) + " median",
                    duration(stats["min"]),
                    duration(stats["max"]),
                    str(len(phase.times)),
                )
            )
        else:
            rows.append((phase.name, duration(phase.times[0]), "", "", ""))
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    for row in rows:
        cells = [row[0].ljust(widths[0])] + [cell.rjust(w) for cell, w in zip(row[1:], widths[1:])]
        stream.write("  " + "    ".join(cells) + "  \n")
    stream.write(footer_line(timings) + "\n")
    if timings.footer.get("memory"):
        stream.write(timings.footer["memory"] + "\n")
    for line in timings.footer.get("not_repeated", ()):
        stream.write(line + "\n")
    stream.flush()


def footer_line(timings: Timings) -> str:
    f = timings.footer
    mode = f"{f['mode']}  |  " if f.get("mode") else ""
    ratio = f.get("cost_ratio")
    parts = [
        f"derivative/function {ratio:.2f}x (median)" if ratio else "derivative/function n/a",
        f"{f.get('command', '')} via {f.get('engine', 'torch.func')}"
        + (" (fallback)" if timings.notes else "")
        + (f" ({f['choice']})" if f.get("choice") else ""),
        f"device {f.get('device', '?')}",
        f"dtype {f.get('dtype', '?')}",
        f"torch {f.get('torch', '?')}",
    ]
    return mode + "  |  ".join(parts)


def duration(seconds: float) -> str:
    if seconds >= 1:
        return f"{seconds:.3f} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.3f} ms"
    return f"{seconds * 1e6:.1f} us"


def _shape(shape: tuple[int, ...]) -> str:
    return "(" + ", ".join(map(str, shape)) + ("," if len(shape) == 1 else "") + ")"


def warn_non_finite(stream: IO[str], results: dict[str, Any]) -> None:
    """One warning line per result holding NaN or infinity."""
    import numpy as np

    for key, array in results.items():
        if array.dtype.kind == "f" and array.size and not np.isfinite(array).all():
            stream.write(
                non_finite_line(key, int(np.isnan(array).sum()), int(np.isinf(array).sum()), array.size)
            )


def non_finite_line(key: str, nan: int, inf: int, size: int) -> str:
    return f"warning: {key} holds {nan} NaN and {inf} infinite value(s) of {size}\n"


def render_checks(stream: IO[str], report: Any) -> None:
    """The verdict table of ``jac check``, then one line per failed or skipped check."""
    from jaccli.io import streams

    if streams.is_plain(stream):  # a pipe or a file: the same lines, without importing rich
        streams.write_text(stream, "".join(f"{line}\n" for line in _plain_checks(report)))
        return
    from rich.markup import escape
    from rich.table import Table

    colour = {"PASS": "green", "FAIL": "bold red", "SKIPPED": "yellow"}
    table = Table(box=None, padding=(0, 2), show_edge=False, header_style="bold")
    for column, justify in (
        ("check", "left"),
        ("max abs err", "right"),
        ("max rel err", "right"),
        ("", "left"),
    ):
        table.add_column(column, justify=justify, no_wrap=True)
    for row in report.rows:
        table.add_row(
            row.name,
            "" if row.max_abs is None else f"{row.max_abs:.2e}",
            "" if row.max_rel is None else f"{row.max_rel:.2e}",
            f"[{colour[row.verdict]}]{row.verdict}[/]",
        )
    console = console_for(stream)
    console.print(table)
    for row in report.rows:
        if row.detail:
            console.print(
                f"  [{colour[row.verdict]}]{row.verdict}[/] {escape(row.name)}: {escape(row.detail)}"
            )
    tol = report.tolerance
    verdict = "PASS" if report.passed else "FAIL"
    console.print(
        f"[{colour[verdict]}]{verdict}[/] in {report.dtype}: an entry passes when |a - b| <= atol + rtol*|b| "
        f"(atol {tol['atol']:g}, rtol {tol['rtol']:g}); finite differences with eps {tol['eps']:g}"
    )


def _plain_checks(report: Any) -> list[str]:
    """render_checks' table and lines as rich lays them out without styles (box=None,
    padding (0, 2)): columns as wide as their widest cell, two spaces either side."""
    header = ("check", "max abs err", "max rel err", "")
    cells = [header] + [
        (
            row.name,
            "" if row.max_abs is None else f"{row.max_abs:.2e}",
            "" if row.max_rel is None else f"{row.max_rel:.2e}",
            row.verdict,
        )
        for row in report.rows
    ]
    widths = [max(len(r[i]) for r in cells) for i in range(4)]
    lines = []
    for r in cells:
        parts = [r[0].ljust(widths[0]), r[1].rjust(widths[1]), r[2].rjust(widths[2]), r[3].ljust(widths[3])]
        lines.append("  " + "    ".join(parts) + "  ")
    lines += [f"  {row.verdict} {row.name}: {row.detail}" for row in report.rows if row.detail]
    tol = report.tolerance
    lines.append(
        f"{'PASS' if report.passed else 'FAIL'} in {report.dtype}: an entry passes when |a - b| <= atol + "
        f"rtol*|b| (atol {tol['atol']:g}, rtol {tol['rtol']:g}); finite differences with eps {tol['eps']:g}"
    )
    return lines
