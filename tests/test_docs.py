"""Docs that cannot rot: help texts carry examples; the commands and snippets of the README and
of every page in docs/ run, and their links resolve."""

import re
import shlex
import shutil

import numpy as np
import pytest
from conftest import EXAMPLES, ROOT, jac

from jaccli.cli.commands import cli

README = (ROOT / "README.md").read_text()
COMMANDS = sorted(cli.commands)
GENERATED = {"docs/cli.md"}  # the help texts, written by docs/generate_cli.py: nothing in it to run
# the README and every topic page, by path from the repository root
PAGES = {"README.md": README} | {
    f"docs/{p.name}": p.read_text()
    for p in sorted((ROOT / "docs").glob("*.md"))
    if f"docs/{p.name}" not in GENERATED
}


def _blocks(lang: str, text: str = README) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", text, flags=re.S)


def _commands(text: str) -> list[str]:
    lines = [line for block in _blocks("sh", text) for line in block.splitlines()]
    return [line for line in lines if line.startswith("jac ")]


def _readme_commands() -> list[str]:
    return _commands(README)


def _documented_commands() -> list[str]:
    """Every `jac` line of a ```sh block in the README and the docs pages, each once."""
    return list(dict.fromkeys(line for text in PAGES.values() for line in _commands(text)))


def _page_blocks(lang: str) -> list:
    """(page, block) of every ```lang block, named by the page and the block's first line."""
    return [
        pytest.param(page, block, id=f"{page}: {block.splitlines()[0][:40]}")
        for page, text in PAGES.items()
        for block in _blocks(lang, text)
    ]


@pytest.fixture
def examples_copy(tmp_path, monkeypatch):
    shutil.copytree(EXAMPLES, tmp_path / "examples")
    shutil.copytree(ROOT / "configs", tmp_path / "configs")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_the_four_commands_exist():
    assert {"jvp", "vjp", "jacfwd", "jacrev"} <= set(COMMANDS)


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help_with_an_example(command):
    run = jac(command, "--help")
    assert run.code == 0, run
    assert "Examples:" in run.stdout
    assert re.search(rf"^\s+jac {command} \S+", run.stdout, flags=re.M), run.stdout


def test_top_level_help_lists_every_command():
    run = jac("--help")
    assert run.code == 0
    for command in COMMANDS:
        assert command in run.stdout


@pytest.mark.parametrize("line", _documented_commands())
def test_documented_command_runs(line, examples_copy):
    expected = re.search(r"# exit (\d+)", line)  # a command documented to fail says so
    if "--plot" in line:
        pytest.importorskip("matplotlib")  # the plot extra
    run = jac(*shlex.split(line, comments=True)[1:])
    assert run.code == (int(expected.group(1)) if expected else 0), (line, run)
    if line.split()[1] != "info":
        assert "function alone" in run.stderr  # the timing table, on stderr


def test_readme_lists_enough_commands():
    commands = _readme_commands()
    assert len(commands) >= 7
    assert {c.split()[1] for c in commands} >= {"jvp", "vjp", "jacfwd", "jacrev"}


def test_readme_names_every_command_and_runs_an_example_of_each_but_serve():
    table = README[README.index("## Commands") :]
    for command in COMMANDS:
        assert f"| `jac {command}" in table, f"the README's command table has no row for jac {command}"
    assert {c.split()[1] for c in _readme_commands()} >= set(COMMANDS) - {"serve"}  # serve: a daemon
    assert "`jac serve start`" in README


def test_readme_stays_a_first_ten_minutes_read():
    size = len(README.encode("utf-8"))
    assert size < 12_000, f"README.md is {size} bytes: move the detail into a page of docs/ and link it"


def test_every_docs_page_is_linked_from_the_readme():
    linked = {target.split("#")[0] for _, target in _links(README)}
    for page in sorted((ROOT / "docs").glob("*.md")):
        assert f"docs/{page.name}" in linked, f"README.md links no docs/{page.name}"


def _links(text: str) -> list[tuple[str, str]]:
    """(text, target) of each markdown link outside fenced blocks and inline code."""
    prose = re.sub(r"```.*?```", "", text, flags=re.S)
    prose = re.sub(r"`[^`\n]*`", "", prose)
    return re.findall(r"!?\[([^\]]*)\]\(([^)\s]+)\)", prose)


def _anchors(text: str) -> set[str]:
    """GitHub's ids for a page's headings: lower case, punctuation dropped, spaces to hyphens,
    -1, -2, ... for repeats."""
    seen: dict[str, int] = {}
    for heading in re.findall(r"^#{1,6} (.+)$", re.sub(r"```.*?```", "", text, flags=re.S), flags=re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        seen[slug] = seen.get(slug, -1) + 1
        if seen[slug]:
            seen[f"{slug}-{seen[slug]}"] = 0
    return set(seen)


def test_anchors_follow_githubs_ids():
    text = "# A\n## `jac check`: are the derivatives right?\n## Sparse: `--sparse`\n## Sparse: `--sparse`\n"
    assert _anchors(text) == {
        "a",
        "jac-check-are-the-derivatives-right",
        "sparse---sparse",
        "sparse---sparse-1",
    }


@pytest.mark.parametrize("page", sorted(PAGES))
def test_links_resolve(page):
    links = _links(PAGES[page])
    if page == "README.md":
        assert len(links) >= 10  # the table of contents is read, not skipped
    for label, target in links:
        if re.match(r"[a-z]+:", target):
            continue  # https://..., mailto:
        path, _, anchor = target.partition("#")
        file = (ROOT / page).parent / path if path else ROOT / page
        assert file.resolve().is_relative_to(ROOT) and file.exists(), (
            f"{page}: [{label}]({target}): no such file"
        )
        if anchor:
            assert file.suffix == ".md", (
                f"{page}: [{label}]({target}): an anchor into a file that is not a page"
            )
            assert anchor in _anchors(file.read_text()), f"{page}: [{label}]({target}): no such heading"


# Printed numbers: the same up to what differs between CPUs (AVX2 or not), thread counts and
# summation orders. Errors of finite differences and of float64 round-off (below NOISE) are
# noise; other numbers must agree to RTOL, so a stale README (other examples, other digits
# beyond the last stable one, other shapes) still fails.
_NUMBER = re.compile(r"[-+]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?")
NOISE = 1e-6
RTOL = 1e-4


def _skeleton(line: str) -> str:
    """A line with each number replaced by '#' and no spaces (numpy aligns columns by the
    widest number, which depends on the digits printed)."""
    return "".join(_NUMBER.sub("#", line).split())


def _numbers(line: str) -> list[float]:
    return [float(n) for n in _NUMBER.findall(line)]


def same_printout(got: list[str], expected: list[str]) -> str | None:
    """None when two printouts agree in everything but rounding noise, else the first difference."""
    if len(got) != len(expected):
        return f"{len(got)} lines printed, {len(expected)} in the docs"
    for n, (a, b) in enumerate(zip(got, expected)):
        if _skeleton(a) != _skeleton(b):
            return f"line {n + 1}: {a!r} vs the docs' {b!r}"
        for x, y in zip(_numbers(a), _numbers(b)):
            if not (abs(x) < NOISE and abs(y) < NOISE) and abs(x - y) > RTOL * max(abs(x), abs(y)):
                return f"line {n + 1}: {x} vs the docs' {y} in {b!r}"
    return None


def test_same_printout_ignores_noise_and_catches_real_changes():
    readme = ["  fd: forward J.v          6.42e-11       1.49e-10    PASS", "[[ 0.99339172  0.04957862]"]
    noisy = ["  fd: forward J.v   8.25e-11   2.01e-10    PASS", "[[ 0.99339171  0.0495786 ]"]
    assert same_printout(noisy, readme) is None
    for changed in (
        ["  fd: forward J.v   8.25e-11   2.01e-10    FAIL", readme[1]],  # a verdict
        ["  fd: forward J.v   3.00e-03   2.01e-10    PASS", readme[1]],  # an error that is not noise
        [readme[0], "[[ 0.99439172  0.04957862]"],  # a value beyond the stable digits
        [readme[0], "[[ 0.99339172  0.04957862  1.0]"],  # a shape
        [readme[0]],  # a line
    ):
        assert same_printout(changed, readme) is not None, changed


@pytest.mark.parametrize(("page", "block"), _page_blocks("console"))
def test_documented_console_output_is_what_jac_prints(page, block, examples_copy):
    prompt, *expected = block.strip("\n").splitlines()
    assert prompt.startswith("$ jac ")
    run = jac(*shlex.split(prompt)[2:])
    assert run.code in (0, 1), run
    got = [line.rstrip() for line in run.stdout.strip("\n").splitlines()]
    problem = same_printout(got, expected)
    assert problem is None, (page, problem, "\n".join(got))


@pytest.mark.parametrize(("page", "snippet"), _page_blocks("python"))
def test_documented_python_snippet_runs(page, snippet, examples_copy):
    scope: dict = {}
    exec(compile(snippet, page, "exec"), scope)
    if page == "docs/python.md":  # From Python says what its snippet gives
        np.testing.assert_array_equal(scope["outcome"].results["jvp"], [6, 14, 22])


def test_from_python_has_its_snippet():
    assert len(_blocks("python", PAGES["docs/python.md"])) == 1


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text()
    assert "README.md" in ci
    test_lines = [line for block in _blocks("sh") for line in block.splitlines() if "pytest" in line]
    assert test_lines and re.search(r"^python -m pip install torch==.*\[test[,a-z]*\].*pytest", test_lines[0])


def test_cli_reference_is_generated_from_the_help_texts():
    import importlib.util

    spec = importlib.util.spec_from_file_location("generate_cli", ROOT / "docs" / "generate_cli.py")
    generator = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generator)
    current = generator.TARGET.read_text(encoding="utf-8")
    assert current == generator.render(), f"docs/cli.md is out of date: run '{generator.COMMAND}'"
    for command in COMMANDS:
        assert f"\n## jac {command}\n" in current
        assert f"Usage: jac {command} " in current


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_docs_document_shell_completion(shell):
    assert f"_JAC_COMPLETE={shell}_source jac" in PAGES["docs/configs.md"]
