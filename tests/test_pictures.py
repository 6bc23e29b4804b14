"""Pictures of Jacobians: the terminal heatmap and summary against torch.func, colour rules, --plot.

Every picture is checked cell by cell against the Jacobian computed here by torch.func in
float64: a cell's sign and level (|entry| in ((k-1)/9, k/9] of the largest |entry|), or '.'
for an exact zero. In-process runs write to a pipe-like stream, so they show the plain form.
"""

from __future__ import annotations

import io
import math
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.func as TF
from conftest import EXAMPLES, assert_clean_error, jac, jac_process, write_module

from jaccli.errors import InputError
from jaccli.pipeline import Request, run
from jaccli.report import pictures
from jaccli.report.render import render_text

PLAIN = ("--no-timings", "--repeat", "0", "--dtype", "float64")
SMOOTH = f"{EXAMPLES}/stencil.py:smooth"

FUNCTIONS = """
import torch

def tiny(x):
    # a diagonal Jacobian holding 1e-12, an exact zero and both signs
    return x * torch.tensor([1e-12, 1.0, -2.0, 0.0, 0.5], dtype=x.dtype)

def rows(x, n=40):
    # n outputs from 3 inputs; the third input is unused (a zero column)
    k = torch.arange(1.0, n + 1, dtype=x.dtype)
    return torch.sin(k * x[0]) - k * x[1] ** 2

def grid(x):
    # (6, 10) -> (50,): every output reads a few inputs, most entries are zero
    flat = x.reshape(-1)
    return torch.tanh(flat[:50] * flat[10:]) + flat[:50] ** 3

def loss(x, y):
    return (x**2 * y[:3].sum()).sum() + torch.sin(y).prod()
"""


@pytest.fixture
def mod(workdir):
    write_module(workdir, "picmod", FUNCTIONS)
    import picmod

    return picmod


def expected_cells(matrix: np.ndarray) -> list[list[str]]:
    """What the heatmap must show, from the definition in docs/inputs-outputs.md."""
    scale = np.abs(matrix).max()
    cells = []
    for row in matrix:
        line = []
        for v in row:
            if v == 0:
                line.append(" .")
            else:
                k = max(1, math.ceil(9 * abs(v) / scale))
                line.append(("+" if v > 0 else "-") + str(k))
        cells.append(line)
    return cells


def heatmap_cells(stdout: str, nth: int = 0) -> list[list[str]]:
    """The two-character cells of the nth heatmap in plain text output."""
    lines = stdout.splitlines()
    start = [i for i, line in enumerate(lines) if line.startswith("heatmap: ")][nth]
    body = []
    for line in lines[start + 2 :]:
        match = re.fullmatch(r"\s*(\d+) (.*)", line)
        if not match or line.startswith("levels:"):
            break
        assert int(match.group(1)) == len(body)  # rows are labelled in order
        cells = match.group(2)
        body.append([cells[i : i + 2] for i in range(0, len(cells), 2)])
    return body


def reference(fn, *primals) -> np.ndarray:
    return TF.jacrev(fn)(*primals).detach().numpy()


@pytest.mark.parametrize(
    ("func", "input_shape"),
    [(SMOOTH, (12,)), (f"{EXAMPLES}/quickstart.py:f", (3, 2)), ("picmod:tiny", (5,))],
    ids=["banded", "2-d-input", "tiny-and-zero"],
)
def test_heatmap_cells_are_the_levels_of_the_jacobian(mod, workdir, func, input_shape):
    x = np.random.default_rng(1).standard_normal(input_shape)
    np.save("x.npy", x)
    run_ = jac("jacobian", func, "-p", "x.npy", *PLAIN)
    assert run_.code == 0, run_
    fn = mod.tiny if func == "picmod:tiny" else _example(func)
    J = reference(fn, torch.from_numpy(x))
    matrix = J.reshape(-1, x.size)
    assert heatmap_cells(run_.stdout) == expected_cells(matrix)
    assert run_.stdout.index("[[") < run_.stdout.index("heatmap: ")  # the numbers first, then the picture


def _example(func: str):
    import importlib.util

    path, name = func.rsplit(":", 1)
    spec = importlib.util.spec_from_file_location("example_" + name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return getattr(module, name)


def test_tiny_entries_are_never_shown_as_zero(mod):
    run_ = jac("jacobian", "picmod:tiny", "-p", "[1, 1, 1, 1, 1]", *PLAIN)
    cells = heatmap_cells(run_.stdout)
    assert [cells[i][i] for i in range(5)] == ["+1", "+5", "-9", " .", "+3"]
    assert "levels: +k positive, -k negative" in run_.stdout
    assert "x 2 = max |entry|" in run_.stdout


def test_a_two_d_input_is_explained_by_its_multi_index():
    run_ = jac("jacfwd", f"{EXAMPLES}/quickstart.py:f", "-p", "randn:3,2", *PLAIN)
    assert (
        "heatmap: rows are the elements of output (3,); columns are the elements of primal 0 (3, 2) "
        "(column 5 is primal 0[2, 1]), row-major"
    ) in run_.stdout


def test_hessian_blocks_get_one_heatmap_each(mod):
    run_ = jac("hessian", "picmod:loss", "-p", "randn:3", "-p", "randn:4", "--argnums", "0,1", *PLAIN)
    assert run_.code == 0, run_
    rng = np.random.default_rng(0)
    x, y = (torch.from_numpy(rng.standard_normal(n)) for n in (3, 4))
    H = TF.hessian(mod.loss, argnums=(0, 1))(x, y)
    for n, (i, j) in enumerate([(0, 0), (0, 1), (1, 0), (1, 1)]):
        assert heatmap_cells(run_.stdout, n) == expected_cells(H[i][j].numpy())
    assert "rows are the elements of primal 0 (3,); columns are the elements of primal 1 (4,)" in run_.stdout


@pytest.mark.parametrize(("n", "picture"), [(40, "heatmap: "), (41, "summary: ")])
def test_forty_rows_get_a_heatmap_and_more_a_summary(mod, n, picture):
    run_ = jac("jacobian", "picmod:rows", "-p", "randn:3", "--kwarg", f"n={n}", *PLAIN)
    assert run_.code == 0, run_
    assert picture in run_.stdout
    assert ("heatmap: " if picture == "summary: " else "summary: ") not in run_.stdout


@pytest.mark.parametrize(
    ("cols", "width", "kind"),
    [(40, 200, "heatmap"), (41, 200, "summary"), (39, 80, "heatmap"), (40, 80, "summary")],
)
def test_columns_fit_the_width_up_to_forty(cols, width, kind):
    matrix = np.arange(3.0 * cols).reshape(3, cols)
    axes = pictures.Axes("output", (3,), "primal 0", (cols,))
    lines = [line.plain for line in pictures.picture(matrix, axes, colour=False, width=width)]
    assert lines[0].startswith(kind + ": ")
    drawn = [line for line in lines if re.fullmatch(r"[ \d.+-]+", line)]  # labels and cells
    assert len(drawn) == 4 and all(len(line) <= width for line in drawn)


def test_nan_and_infinity_are_marked_and_leave_the_scale_alone():
    matrix = np.array([[np.nan, 0.0, 1e-3], [-1.0, np.inf, 2.0]])
    axes = pictures.Axes("output", (2,), "primal 0", (3,))
    lines = [line.plain for line in pictures.picture(matrix, axes, colour=False, width=80)]
    assert lines[2:4] == ["0  ! .+1", "1 -5 !+9"]
    assert lines[4].endswith("x 2 = max |entry|; . exactly zero; ! NaN or infinite")


def test_an_all_zero_jacobian_is_summarised_without_entries():
    axes = pictures.Axes("output", (50,), "primal 0", (50,))
    lines = [line.plain for line in pictures.picture(np.zeros((50, 50)), axes, colour=False, width=80)]
    assert lines[0] == (
        "summary: 50 x 50 matrix, Frobenius norm 0, max |entry| 0, 2500 of 2500 entries exactly zero (100.0%)"
    )
    grid = lines[4:36]
    assert len(grid) == 32 and all(set(line.split(maxsplit=1)[1]) == {" ", "."} for line in grid)
    assert lines[-1] == "largest |entries|:"


def test_summary_numbers_are_numpy_s(mod):
    run_ = jac("jacrev", "picmod:grid", "-p", "randn:6,10", *PLAIN)
    assert run_.code == 0, run_
    x = torch.from_numpy(np.random.default_rng(0).standard_normal((6, 10)))
    J = reference(mod.grid, x).reshape(50, 60)
    out = run_.stdout
    head = re.search(
        r"summary: 50 x 60 matrix, Frobenius norm (\S+), max \|entry\| (\S+), (\d+) of 3000 ", out
    )
    assert head, out
    assert float(head.group(1)) == pytest.approx(np.linalg.norm(J), rel=1e-5)
    assert float(head.group(2)) == pytest.approx(np.abs(J).max(), rel=1e-5)
    assert int(head.group(3)) == int((J == 0).sum())
    listed = re.findall(
        r"^  \[(\d+), (\d+)\] = (\S+)   d output\[(\d+)\] / d primal 0\[(\d+), (\d+)\]$", out, re.M
    )
    order = np.argsort(-np.abs(J), axis=None, kind="stable")[:5]
    assert [(int(r), int(c)) for r, c, *_ in listed] == [divmod(int(k), 60) for k in order]
    for r, c, value, out_index, i, j in listed:
        assert float(value) == pytest.approx(J[int(r), int(c)], rel=1e-5)
        assert int(out_index) == int(r) and (int(i), int(j)) == divmod(int(c), 10)


def test_summary_grid_marks_exactly_the_all_zero_blocks(mod):
    run_ = jac("jacrev", "picmod:grid", "-p", "randn:6,10", *PLAIN)
    x = torch.from_numpy(np.random.default_rng(0).standard_normal((6, 10)))
    J = np.abs(reference(mod.grid, x).reshape(50, 60))
    lines = run_.stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("coarse grid: 32 x 32 blocks"))
    grid = [line for line in lines[start + 2 : start + 34]]
    row_starts = [int(line.split()[0]) for line in grid]
    col_edges = np.linspace(0, 60, 33).round().astype(int)  # 32 blocks of nearly equal size
    row_edges = row_starts + [50]
    for b, line in enumerate(grid):
        cells = line[len(line) - 64 :]
        for c in range(32):
            block = J[row_edges[b] : row_edges[b + 1], col_edges[c] : col_edges[c + 1]]
            want = " ." if not block.any() else f" {math.ceil(9 * block.max() / J.max())}"
            assert cells[2 * c : 2 * c + 2] == want, (b, c)


def test_batched_results_get_no_picture():
    run_ = jac("jacobian", f"{EXAMPLES}/mlp.py:model()", "-p", "randn:2,4", "--batch-dim", "0", *PLAIN)
    assert run_.code == 0, run_
    assert "heatmap" not in run_.stdout and "summary" not in run_.stdout


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _render(monkeypatch, no_color: str | None) -> str:
    monkeypatch.setenv("TERM", "xterm-256color")
    monkeypatch.setenv("COLORTERM", "truecolor")
    for name in ("FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE"):
        monkeypatch.delenv(name, raising=False)
    if no_color is None:
        monkeypatch.delenv("NO_COLOR", raising=False)
    else:
        monkeypatch.setenv("NO_COLOR", no_color)
    outcome = run(Request("jacobian", SMOOTH, primals=["randn:12"], repeat=0))
    stream = Terminal()
    render_text(stream, outcome.results, outcome.notes, outcome.dtypes, outcome.axes)
    return stream.getvalue()


def test_a_colour_terminal_gets_red_positive_and_blue_negative_cells(monkeypatch):
    from rich.console import Console
    from rich.text import Text

    out = _render(monkeypatch, None)
    assert "\x1b[" in out
    J = run(Request("jacobian", SMOOTH, primals=["randn:12"], repeat=0)).results["jacobian"]
    lines = Text.from_ansi(out).split("\n")
    start = next(i for i, line in enumerate(lines) if line.plain.startswith("heatmap: "))
    console = Console(color_system="truecolor")
    for r, line in enumerate(lines[start + 2 : start + 14]):
        cells = [seg for seg in line.render(console) if seg.text in ("  ", " ·")]
        assert len(cells) == 12
        for c, seg in enumerate(cells):
            if J[r, c] == 0:
                assert seg.text == " ·" and (seg.style is None or seg.style.bgcolor is None)
            else:
                red, _, blue = seg.style.bgcolor.get_truecolor()
                assert (red > blue) == (J[r, c] > 0), (r, c)


def test_no_color_gives_no_escapes_on_a_terminal(monkeypatch):
    out = _render(monkeypatch, "1")
    assert "\x1b" not in out
    assert "heatmap: " in out and " ." in out and "levels: +k positive" in out


def test_a_pipe_gets_the_plain_picture_without_escapes(tmp_path):
    proc = jac_process(
        "jacobian", SMOOTH, "-p", "randn:12", "--no-timings", cwd=tmp_path, env={"TERM": "xterm"}
    )
    assert proc.returncode == 0, proc.stderr
    assert b"\x1b" not in proc.stdout and b"\x1b" not in proc.stderr
    assert b"heatmap: " in proc.stdout and b"levels: +k positive" in proc.stdout


# --plot


def test_plot_writes_a_png_matplotlib_reads_back(tmp_path):
    pytest.importorskip("matplotlib")
    import matplotlib.image

    path = tmp_path / "J.png"
    run_ = jac("jacobian", SMOOTH, "-p", "randn:12", "--plot", str(path), *PLAIN)
    assert run_.code == 0, run_
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[0] > 200 and image.shape[1] > 200
    assert image[..., :3].std() > 0.05  # not blank
    red = (image[..., 0] > 0.5) & (image[..., 2] < 0.35)
    blue = (image[..., 2] > 0.5) & (image[..., 0] < 0.35)
    assert red.sum() > 100 and blue.sum() > 100  # both signs are drawn, apart
    assert sorted(p.name for p in tmp_path.iterdir()) == ["J.png"]  # no temporary file left


@pytest.mark.parametrize(("suffix", "magic"), [(".svg", b"<?xml"), (".pdf", b"%PDF")])
def test_plot_format_follows_the_suffix(tmp_path, mod, suffix, magic):
    pytest.importorskip("matplotlib")
    path = tmp_path / f"H{suffix}"
    run_ = jac(
        "hessian", "picmod:loss", "-p", "randn:3", "-p", "randn:4", "--argnums", "0,1", "--plot", str(path)
    )
    assert run_.code == 0, run_
    assert path.read_bytes().startswith(magic)


def test_plot_without_matplotlib_is_refused_before_computing(workdir, monkeypatch):
    write_module(
        workdir,
        "marker",
        """
        import pathlib

        def f(x):
            pathlib.Path("called").touch()
            return x * 2
        """,
    )
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now raises ImportError
    run_ = jac("jacobian", "marker:f", "-p", "randn:3", "--plot", "J.png", "-o", "J.npz")
    assert_clean_error(run_, 2, "--plot needs matplotlib: pip install 'jaccli[plot]'")
    assert sorted(p.name for p in workdir.iterdir() if p.suffix != ".py" and p.name != "__pycache__") == []


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["--plot", "J.jpg"], ["--plot J.jpg", "'.jpg'", ".png, .svg, .pdf"]),
        (["--plot", "J"], ["--plot J", "(none)"]),
        (["--plot", "nowhere/J.png"], ["--plot nowhere/J.png", "does not exist"]),
        (["--plot", "J.png", "--batch-dim", "0"], ["--plot does not take --batch-dim"]),
        (["--plot", "J.png", "--has-aux", "--select", "aux"], ["--select aux keeps no non-empty Jacobian"]),
        (
            ["--plot", "J.png", "--has-aux", "--kwarg", "empty=true"],
            ["the results hold no non-empty Jacobian"],
        ),
    ],
    ids=["jpg", "no-suffix", "no-folder", "batch-dim", "select-aux", "empty"],
)
def test_plot_refusals_are_one_line_exit_2_and_write_nothing(workdir, args, needles):
    write_module(
        workdir, "auxmod", "def f(x, empty=False):\n    return (x[:0] if empty else x * 2), x.sum()\n"
    )
    func = "auxmod:f" if "--has-aux" in args else SMOOTH
    run_ = jac("jacobian", func, "-p", "randn:3,4", *args, "-o", "J.npz")
    assert_clean_error(run_, 2, *needles)
    assert not any(p.suffix in (".png", ".npz") for p in workdir.iterdir())


def test_plot_is_only_for_jacobians_and_hessians():
    with pytest.raises(InputError, match="--plot is for jacfwd, jacrev, jacobian, hessian; jvp"):
        run(Request("jvp", SMOOTH, primals=["randn:3"], plot="J.png"))
    assert_clean_error(jac("jvp", SMOOTH, "-p", "randn:3", "--plot", "J.png"), 2, "--plot")


def test_help_does_not_import_matplotlib(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "jaccli", "jacobian", "--help"],
        capture_output=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert proc.returncode == 0 and b"--plot PATH" in proc.stdout
    assert b"| matplotlib" not in proc.stderr and b"| jaccli.cli.commands" in proc.stderr
