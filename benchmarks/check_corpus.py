"""The layer corpus (tests/layers_corpus.py): jac check's verdict against torch.autograd.gradcheck's
and gradgradcheck's, each layer in its wrong and its right version.

    PYTHONPATH=$PWD python benchmarks/check_corpus.py            # a Markdown table on stdout

jac runs in-process through the CLI (``jac check ... --format json``); the failing rows it names
are listed. "jac o1" is ``jac check`` as it stands (order 1); "jac o2" adds ``--order 2``.
"""

from __future__ import annotations

import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))


def jac_verdict(args: list[str]) -> tuple[int, dict | None]:
    from click.testing import CliRunner

    from jaccli.cli.commands import main

    runner = CliRunner()
    with runner.isolation() as streams:
        try:
            main(args)
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 0
        sys.stdout.flush()
        text = streams[0].getvalue().decode()
    return code, (json.loads(text) if text.strip() else None)


def main() -> None:
    import layers_corpus as corpus

    print(
        "| layer | style | bug | version | jac o1 | jac o2 | failing rows (jac) | gradcheck | gradgradcheck |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for case in corpus.CASES:
        for version in ("wrong", "right"):
            verdicts = {}
            failing = set()
            for order in (1, 2):
                args = [a for a in case.args(version)]
                if "--order" in args:
                    i = args.index("--order")
                    del args[i : i + 2]
                args += ["--order", str(order)]
                code, doc = jac_verdict(args)
                verdicts[order] = doc["verdict"] if doc else f"exit {code}"
                if doc:
                    failing |= {r["check"] for r in doc["checks"] if r["verdict"] == "FAIL"}
            torch_verdicts = corpus.gradchecks(case, version)
            word = {True: "PASS", False: "FAIL"}
            print(
                f"| {case.name} | {case.style} | {case.bug} | {version} | {verdicts[1]} | {verdicts[2]} | "
                f"{', '.join(sorted(failing)) or '-'} | {word[torch_verdicts['gradcheck']]} | "
                f"{word[torch_verdicts['gradgradcheck']]} |"
            )


if __name__ == "__main__":
    main()
