"""Write docs/cli.md, the command reference, from the ``--help`` text of every jac command.

    python docs/generate_cli.py            # rewrite docs/cli.md
    python docs/generate_cli.py --check    # exit 1 if docs/cli.md is out of date

The text is click's own help formatting at a fixed width, so the file does not depend on the
terminal it was generated in; tests/test_docs.py fails when it differs from the commands.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

TARGET = Path(__file__).resolve().parent / "cli.md"
WIDTH = 100
COMMAND = "python docs/generate_cli.py"


def render() -> str:
    """The whole of docs/cli.md: the top-level help, then each command's, in click's order."""
    from jaccli.cli.commands import cli

    settings = {**cli.context_settings, "terminal_width": WIDTH, "max_content_width": WIDTH}
    root = click.Context(cli, info_name="jac", **settings)
    names = cli.list_commands(root)
    parts = [
        "# jac command reference",
        "",
        f"Generated from the `--help` texts by `{COMMAND}`; do not edit by hand.",
        "",
        " | ".join(f"[`jac {name}`](#jac-{name})" for name in names),
        "",
        "## jac",
        "",
        "```text",
        cli.get_help(root),
        "```",
    ]
    for name in names:
        command = cli.get_command(root, name)
        ctx = click.Context(command, info_name=name, parent=root, **settings)
        parts += ["", f"## jac {name}", "", "```text", command.get_help(ctx), "```"]
    return "\n".join(parts) + "\n"


def main(argv: list[str]) -> int:
    text = render()
    if argv == ["--check"]:
        current = TARGET.read_text(encoding="utf-8") if TARGET.exists() else ""
        if current != text:
            print(f"{TARGET} is out of date: run '{COMMAND}'", file=sys.stderr)
            return 1
        return 0
    if argv:
        print(f"usage: {COMMAND} [--check]", file=sys.stderr)
        return 2
    TARGET.write_text(text, encoding="utf-8")
    print(f"wrote {TARGET}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
