"""The ``jac`` command line: thin commands over :mod:`jaccli.runner`.

Each command gathers its options into a :class:`~jaccli.runner.Request`, runs it, writes the
results and prints the timing table. ``main`` is the one place where errors become one line
on standard error and an exit code. Nothing heavy is imported until a command runs.
"""

from __future__ import annotations

import sys
from typing import Any

import click

from jaccli import __version__
from jaccli.params import (
    Flags,
    array_option,
    function_and_primals,
    inputs_and_device,
    jacobian_options,
    output_options,
    timing_options,
)

EPILOG_TAIL = "Exit codes: 0 success, 2 usage or input error, 3 the function or its derivative raised."


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, "-V", "--version", prog_name="jac", message="%(prog)s %(version)s")
def cli() -> None:
    """Derivatives of your own Python function, with torch.func.

    \b
    jac jvp    FUNC -p X -t V   f(x) and the Jacobian-vector product J.v
    jac vjp    FUNC -p X -u U   f(x) and the vector-Jacobian product u^T.J, per primal
    jac jacfwd FUNC -p X        the Jacobian, forward mode
    jac jacrev FUNC -p X        the Jacobian, reverse mode

    FUNC is module:name, path/to/file.py:name, module:Obj.attr or module:factory().
    Results go to stdout (or -o FILE); the timing table goes to stderr.
    Run 'jac COMMAND --help' for a command's options and examples.
    """


def _execute(command: str, options: dict[str, Any], **extra: Any) -> None:
    from jaccli.runner import Request, deliver, run

    request = Request(
        command=command,
        func=options["func"],
        primals=options["values_primals"],
        tangents=options.get("values_tangents", ()),
        cotangents=options.get("values_cotangents", ()),
        kwargs=dict(options["kwargs"]),
        has_aux=options["has_aux"],
        strict=options["strict"],
        dtype=options["dtype"],
        device=options["device"],
        seed=options["seed"],
        out=options["out"],
        format=options["fmt"],
        select=options["select"],
        repeat=options["repeat"],
        warmup=options["warmup"],
        timings_path=options["timings_path"],
        **extra,
    )
    quiet = options["quiet"]
    stdout = sys.stdout.buffer
    outcome = run(request, stdout=stdout)
    sys.stdout.flush()
    deliver(outcome, request, stdout, sys.stdout)
    if quiet:
        return
    from jaccli.render import render_timings, warn_non_finite

    warn_non_finite(sys.stderr, outcome.results)
    if request.out not in (None, "-"):
        keys = ", ".join(outcome.results)
        click.echo(f"wrote {len(outcome.results)} result(s) ({keys}) to {request.out}", err=True)
    if not options["no_timings"]:
        render_timings(sys.stderr, outcome.timings)


@cli.command(epilog=EPILOG_TAIL)
@function_and_primals
@array_option(
    "-t",
    "--tangents",
    "The vector v, one per primal with its shape; 'randn' or 'ones' alone stands for all. "
    "May be left out when every primal has one element (v = 1).",
)
@inputs_and_device
@output_options
@timing_options
def jvp(**options: Any) -> None:
    """f(x) and the Jacobian-vector product J.v (forward mode, torch.func.jvp).

    Keys: output, jvp (with .0, .1 or .key for tuple or dict outputs), aux.

    \b
    Examples:
      jac jvp examples/quickstart.py:f -p examples/x.npy -t examples/v.npy
      jac jvp mymod:f -p "[[1,1],[1,1],[1,1]]" -t "[[1,2],[3,4],[5,6]]"
      jac jvp mymod:f -p 0.5                  # one-element input: v defaults to 1
      jac jvp mymod:f -p x.npy -p y.npy -t randn --dtype float64
    """
    _execute("jvp", options)


@cli.command(epilog=EPILOG_TAIL)
@function_and_primals
@array_option(
    "-u",
    "--cotangents",
    "The vector u, one per output (a mapping keyed like a dict output); 'ones' or 'randn' "
    "alone stands for all. May be left out when the output has one element (u = 1).",
)
@inputs_and_device
@output_options
@timing_options
def vjp(**options: Any) -> None:
    """f(x) and the vector-Jacobian product u^T.J for every primal (reverse mode, torch.func.vjp).

    Keys: output, vjp.0, vjp.1, ... (one per primal), aux.

    \b
    Examples:
      jac vjp examples/quickstart.py:loss -p examples/x.npy          # a gradient
      jac vjp examples/two_inputs.py:f -p examples/xy.npz -u examples/u.yaml
      jac vjp mymod:f -p x.npy -u ones -o grads.npz
    """
    _execute("vjp", options)


def _jacobian_help(mode: str, command: str, examples: str) -> str:
    return f"""The full Jacobian by {mode} mode (torch.func.{command}): shape output.shape + input.shape.

    Keys: jacobian; jacobian.0, jacobian.1 for several --argnums; jacobian.<out>.<arg> for
    several outputs; aux. --flatten gives the (output elements x input elements) matrix.

    \b
    Examples:
{examples}
    """


@cli.command(
    epilog=EPILOG_TAIL,
    help=_jacobian_help(
        "forward",
        "jacfwd",
        """\
      jac jacfwd examples/quickstart.py:f -p examples/x.npy
      jac jacfwd mymod:f -p x.npy -p y.npy --argnums 0,1 -o J.npz
      jac jacfwd mymod:f -p "[[1,1],[1,1],[1,1]]" --flatten""",
    ),
)
@function_and_primals
@jacobian_options
@click.option(
    "--randomness",
    type=click.Choice(["error", "different", "same"]),
    default="error",
    show_default=True,
    help="How random operations behave under vmap (torch.func's meaning).",
)
@inputs_and_device
@output_options
@timing_options
def jacfwd(**options: Any) -> None:
    _execute(
        "jacfwd",
        options,
        argnums=options["argnums"],
        flatten=options["flatten"],
        randomness=options["randomness"],
    )


@cli.command(
    epilog=EPILOG_TAIL,
    help=_jacobian_help(
        "reverse",
        "jacrev",
        """\
      jac jacrev "examples/mlp.py:model()" -p randn:4
      jac jacrev mymod:f -p x.npy --chunk-size 64 -o J.npy""",
    ),
)
@function_and_primals
@jacobian_options
@click.option(
    "--chunk-size",
    type=click.IntRange(min=1),
    metavar="N",
    help="Compute the Jacobian N rows at a time (less memory; torch.func's meaning).",
)
@inputs_and_device
@output_options
@timing_options
def jacrev(**options: Any) -> None:
    _execute(
        "jacrev",
        options,
        argnums=options["argnums"],
        flatten=options["flatten"],
        chunk_size=options["chunk_size"],
    )


def main(argv: list[str] | None = None, prog_name: str = "jac") -> None:
    """Run the CLI; every error ends here as one line on stderr and the contract's exit code."""
    from jaccli.errors import ExitCode, JacError

    Flags.debug = False
    code: int = ExitCode.OK
    try:
        result = cli.main(args=argv, prog_name=prog_name, standalone_mode=False)
        code = result if isinstance(result, int) else ExitCode.OK
    except _NO_ARGS_IS_HELP as exc:  # bare 'jac': the help, as a page, not as an error
        click.echo(exc.ctx.get_help() if exc.ctx else exc.format_message())
        code = ExitCode.OK
    except click.UsageError as exc:
        where = exc.ctx.command_path if exc.ctx else prog_name
        _fail(f"{where}: error: {exc.format_message()} (see '{where} --help')")
        code = exc.exit_code
    except click.ClickException as exc:
        _fail(f"{prog_name}: error: {exc.format_message()}")
        code = exc.exit_code
    except JacError as exc:
        _fail(f"{prog_name}: error: {exc}")
        code = exc.exit_code
    except (KeyboardInterrupt, click.Abort):
        _fail(f"{prog_name}: interrupted")
        code = 130
    except Exception as exc:
        from jaccli.errors import describe

        _fail(
            f"{prog_name}: internal error: {describe(exc)}; this is a bug in jac: rerun with "
            "--debug for the traceback and report it"
        )
        code = ExitCode.INTERNAL
    sys.exit(int(code))


# click >= 8.2 raises this for a group called with no arguments (older clicks print the help)
_NO_ARGS_IS_HELP = getattr(click.exceptions, "NoArgsIsHelpError", ())


def _fail(line: str) -> None:
    if Flags.debug:
        import traceback

        traceback.print_exc()
    click.echo(line, err=True)
