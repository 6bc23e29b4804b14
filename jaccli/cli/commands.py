"""The ``jac`` command line: thin commands over :mod:`jaccli.pipeline`.

Each command gathers its options into a :class:`~jaccli.pipeline.Request`, runs it, writes the
results and prints the timing table. ``main`` is the one place where errors become one line
on standard error and an exit code. Nothing heavy is imported until a command runs.
"""

from __future__ import annotations

import inspect
import math
import sys
from typing import Any, Callable

import click

from jaccli import __version__
from jaccli.cli.options import (
    Flags,
    argnums_option,
    array_option,
    chunk_size_option,
    config_option,
    engine_options,
    function_and_primals,
    inputs_and_device,
    jacobian_options,
    module_options,
    output_options,
    plot_option,
    randomness_option,
    report_format_option,
    timing_options,
)
from jaccli.sparse.options import sparse_option_group

EPILOG_TAIL = "Exit codes: 0 success, 2 usage or input error, 3 the function or its derivative raised."


class _Group(click.Group):
    """click ends a broken pipe with status 1 ("check failed" in jac); jac ends it as cat does."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except BrokenPipeError as exc:  # standard output or standard error: the reader left
            from jaccli.io.streams import ReaderGone

            raise ReaderGone() from exc


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, "-V", "--version", prog_name="jac", message="%(prog)s %(version)s")
def cli() -> None:
    """Derivatives of your own Python function, with torch.func.

    \b
    jac jvp      FUNC -p X -t V  f(x) and the Jacobian-vector product J.v
    jac vjp      FUNC -p X -u U  f(x) and the vector-Jacobian product u^T.J, per primal
    jac jacfwd   FUNC -p X       the Jacobian, forward mode
    jac jacrev   FUNC -p X       the Jacobian, reverse mode
    jac jacobian FUNC -p X       the Jacobian, forward or reverse mode, chosen by the sizes
    jac hessian  FUNC -p X       the Hessian of a one-element output
    jac hvp      FUNC -p X -t V  f(x), its gradient and the Hessian-vector product H.v
    jac check    FUNC -p X       are the derivatives right? forward vs reverse vs finite differences
    jac spectrum FUNC -p X       singular values (or eigenvalues) of J, from products alone
    jac sparsity FUNC -p X       the sparsity pattern of J (and its colouring), for --sparsity
    jac info                     versions of Python, torch and numpy, and the devices jac can use
    jac run      CONFIG          the command a YAML config names, with its inputs and options
    jac serve    [start|stop|status]  a warm server that makes every later call fast

    FUNC is module:name, path/to/file.py:name, module:Obj.attr or module:factory().
    Results go to stdout (or -o FILE); the timing table goes to stderr.
    Run 'jac COMMAND --help' for a command's options and examples.
    """


# Option names that differ from the Request's field names; every other option keeps its name.
_RENAMED = {
    "values_primals": "primals",
    "values_tangents": "tangents",
    "values_cotangents": "cotangents",
    "fmt": "format",
}
_CLI_ONLY = ("quiet", "no_timings")


def _request(command: str, options: dict[str, Any]):
    """The Request for a command, from whichever options it has."""
    from dataclasses import fields

    from jaccli.pipeline import Request

    known = {f.name for f in fields(Request)}
    values = {_RENAMED.get(k, k): v for k, v in options.items() if k not in _CLI_ONLY}
    values["kwargs"] = dict(values.get("kwargs", ()))
    values["argv"] = list(_ARGV) if _ARGV is not None else None  # for the record (report.record)
    return Request(command=command, **{k: v for k, v in values.items() if k in known})


_ARGV: list[str] | None = None  # this command line, as main received it


def _quiet(options: dict[str, Any]) -> bool:
    """--quiet, or a rank other than 0 under torchrun (rank 0 speaks for all); no progress bars then."""
    from jaccli.report import progress
    from jaccli.scale.distributed import rank

    progress.Switch.quiet = bool(options["quiet"]) or rank() != 0
    return progress.Switch.quiet


def _execute(command: str, options: dict[str, Any]) -> None:
    from jaccli.pipeline import deliver, run

    request = _request(command, options)
    quiet = _quiet(options)
    stdout = sys.stdout.buffer
    outcome = run(request, stdout=stdout)
    sys.stdout.flush()
    deliver(outcome, request, stdout, sys.stdout)
    if quiet:
        return
    from jaccli.report.render import non_finite_line, render_timings, warn_non_finite

    for note in outcome.timings.notes + outcome.timings.remarks:
        click.echo(f"jac: note: {command} {note}", err=True)
    warn_non_finite(sys.stderr, outcome.results)
    keys = list(outcome.results)
    if outcome.streamed is not None:
        streamed = outcome.streamed
        keys = [streamed.key]
        if any(streamed.non_finite):
            size = math.prod(streamed.shape)
            sys.stderr.write(non_finite_line(streamed.key, *streamed.non_finite, size))
    if request.out not in (None, "-"):
        from jaccli.report.render import wrote_line

        click.echo(wrote_line(keys, request.out), err=True)
    if not options["no_timings"]:
        render_timings(sys.stderr, outcome.timings)


def transform_command(help_text: str, *extra: Callable) -> Callable:
    """A transform command: FUNC and primals, its own options, then every shared option group."""

    def decorate(fn: Callable) -> Callable:
        help_clean = inspect.cleandoc(help_text)
        for decorator in reversed(
            (
                cli.command(help=help_clean, epilog=EPILOG_TAIL),
                function_and_primals,
                *extra,
                engine_options,
                module_options,
                inputs_and_device,
                output_options,
                timing_options,
                config_option,
            )
        ):
            fn = decorator(fn)
        return fn

    return decorate


_TANGENTS = array_option(
    "-t",
    "--tangents",
    "The vector v, one per primal with its shape; 'randn' or 'ones' alone stands for all. "
    "May be left out when every primal has one element (v = 1).",
)

_DIRECTIONS = click.option(
    "--directions",
    "n_directions",
    type=click.IntRange(min=1),
    metavar="K",
    help="K directions at once: each tangent (cotangent) has a leading axis of K, as has the result; "
    "a generator draws K. One process, vmap over the transform.",
)


@transform_command(
    """f(x) and the Jacobian-vector product J.v (forward mode, torch.func.jvp).

    Keys: output, jvp (with .0, .1 or .key for tuple or dict outputs), aux.

    \b
    Examples:
      jac jvp examples/quickstart.py:f -p examples/x.npy -t examples/v.npy
      jac jvp mymod:f -p "[[1,1],[1,1],[1,1]]" -t "[[1,2],[3,4],[5,6]]"
      jac jvp mymod:f -p 0.5                  # one-element input: v defaults to 1
      jac jvp mymod:f -p x.npy -p y.npy -t randn --dtype float64
      jac jvp "examples/mlp.py:model()" -p randn:4 -t randn --directions 64   # 64 J.v at once
    """,
    _TANGENTS,
    _DIRECTIONS,
)
def jvp(**options: Any) -> None:
    _execute("jvp", options)


@transform_command(
    """f(x) and the vector-Jacobian product u^T.J for every primal (reverse mode, torch.func.vjp).

    Keys: output, vjp.0, vjp.1, ... (one per primal; vjp.<name> with --wrt params), aux.

    \b
    Examples:
      jac vjp examples/quickstart.py:loss -p examples/x.npy          # a gradient
      jac vjp examples/two_inputs.py:f -p examples/xy.npz -u examples/u.yaml
      jac vjp "examples/mlp.py:model()" -p examples/mlp_x.npy -u ones --wrt params
      jac vjp "examples/mlp.py:model()" -p randn:4 -u randn --directions 2     # the rows of J
    """,
    array_option(
        "-u",
        "--cotangents",
        "The vector u, one per output (a mapping keyed like a dict output); 'ones' or 'randn' "
        "alone stands for all. May be left out when the output has one element (u = 1).",
    ),
    _DIRECTIONS,
)
def vjp(**options: Any) -> None:
    _execute("vjp", options)


def _jacobian_help(title: str, examples: str) -> str:
    return f"""{title}: shape output.shape + input.shape.

    Keys: jacobian; jacobian.0, jacobian.1 for several --argnums (jacobian.<name> with --wrt
    params); jacobian.<out>.<arg> for several outputs; aux. --flatten gives the (output
    elements x input elements) matrix.

    \b
    Examples:
{examples}
    """


@transform_command(
    _jacobian_help(
        "The full Jacobian by forward mode (torch.func.jacfwd)",
        """\
      jac jacfwd examples/quickstart.py:f -p examples/x.npy
      jac jacfwd mymod:f -p x.npy -p y.npy --argnums 0,1 -o J.npz
      jac jacfwd mymod:f -p "[[1,1],[1,1],[1,1]]" --flatten""",
    ),
    jacobian_options,
    randomness_option,
    sparse_option_group,
)
def jacfwd(**options: Any) -> None:
    _execute("jacfwd", options)


@transform_command(
    _jacobian_help(
        "The full Jacobian by reverse mode (torch.func.jacrev)",
        """\
      jac jacrev "examples/mlp.py:model()" -p randn:4
      jac jacrev mymod:f -p x.npy --chunk-size 64 -o J.npy""",
    ),
    jacobian_options,
    chunk_size_option,
    sparse_option_group,
)
def jacrev(**options: Any) -> None:
    _execute("jacrev", options)


@transform_command(
    _jacobian_help(
        "The full Jacobian, forward or reverse mode: --mode auto picks by the input and output sizes "
        "and says which and why",
        """\
      jac jacobian "examples/mlp.py:model()" -p randn:4
      jac jacobian examples/quickstart.py:f -p examples/x.npy --mode fwd --flatten
      jac jacobian "examples/mlp.py:model()" -p randn:32,4 --batch-dim 0     # per sample
      jac jacobian examples/stencil.py:smooth -p randn:12 --plot J.png      # a heatmap image""",
    ),
    click.option(
        "--mode",
        type=click.Choice(["auto", "fwd", "rev"]),
        default="auto",
        show_default=True,
        help="fwd (jacfwd), rev (jacrev), or auto: forward when inputs are no more than outputs.",
    ),
    jacobian_options,
    chunk_size_option,
    randomness_option,
    sparse_option_group,
)
def jacobian(**options: Any) -> None:
    _execute("jacobian", options)


@transform_command(
    """The Hessian of a function with a one-element output (torch.func.hessian).

    Shape: output.shape + input.shape + input.shape. Keys: hessian, or hessian.<i>.<j> for
    several --argnums (positions in --argnums); aux.

    \b
    Examples:
      jac hessian examples/quickstart.py:loss -p examples/x.npy
      jac hessian mymod:f -p x.npy -p y.npy --argnums 0,1 -o H.npz
      jac hessian examples/quickstart.py:loss -p examples/x.npy --plot H.png
    """,
    argnums_option,
    plot_option,
    chunk_size_option,
    randomness_option,
    sparse_option_group,
)
def hessian(**options: Any) -> None:
    _execute("hessian", options)


@transform_command(
    """f(x), its gradient and the Hessian-vector product H.v (forward over reverse).

    For a function with a one-element output. Keys: output, grad, hvp (grad.0, hvp.0, ...
    with several primals), aux.

    \b
    Examples:
      jac hvp examples/quickstart.py:loss -p examples/x.npy -t examples/v.npy
      jac hvp mymod:f -p x.npy -t randn --dtype float64
    """,
    _TANGENTS,
)
def hvp(**options: Any) -> None:
    _execute("hvp", options)


@cli.command(epilog=EPILOG_TAIL)
@function_and_primals
@click.option("--top", type=int, metavar="K", help="How many values [default: 6, fewer if J has fewer].")
@click.option(
    "--which",
    type=click.Choice(["largest", "smallest"]),
    default="largest",
    show_default=True,
    help="The largest or the smallest values.",
)
@click.option("--eig", is_flag=True, help="Eigenvalues of a square J (ARPACK eigs), not singular values.")
@click.option("--hessian", is_flag=True, help="Eigenvalues of the Hessian of a one-element function (eigsh).")
@click.option(
    "--by",
    type=click.Choice(["magnitude", "real"]),
    default="magnitude",
    show_default=True,
    help="--eig, --hessian: order eigenvalues by magnitude or by real part.",
)
@click.option(
    "--rank-tol",
    type=float,
    metavar="TOL",
    help="Numerical rank: singular values above TOL x the largest [default: max(m, n) x eps].",
)
@click.option("--tol", type=float, metavar="TOL", help="ARPACK's relative accuracy [default: machine eps].")
@argnums_option
@click.option(
    "--batch-dim",
    type=int,
    metavar="N",
    help="The primals carry a batch along dimension N: one spectrum per sample, batch first.",
)
@module_options
@inputs_and_device
@output_options
@timing_options
@config_option
def spectrum(**options: Any) -> None:
    """Singular values of J (or eigenvalues of J or of the Hessian) from products alone.

    ARPACK (scipy.sparse.linalg svds, eigs, eigsh) over J.v and J^T.u (H.v for --hessian);
    J is never formed, except from products when it has 16 values or fewer. Computes in
    float64 (--dtype keeps another). Prints each value with the residual of its pair, the
    products used and, for singular values, the condition number and numerical rank. Keys:
    singular_values, residuals, condition, rank, products (left_vectors, right_vectors into
    -o); eigenvalues(.real/.imag), eigenvectors(.real/.imag) with --eig or --hessian.
    Needs scipy (pip install 'jaccli[spectrum]').

    \b
    Examples:
      jac spectrum examples/stencil.py:smooth -p randn:400 --top 4
      jac spectrum examples/rk4.py:step -p examples/pendulum_y0.yaml --eig --top 1
      jac spectrum "examples/mlp.py:loss()" -p examples/mlp_x.npy --wrt params --hessian --by real
    """
    from jaccli.linalg.spectrum import deliver_spectrum, run_spectrum

    request = _request("spectrum", options)
    quiet = _quiet(options)
    outcome = run_spectrum(request, stdout=sys.stdout.buffer)
    deliver_spectrum(outcome, sys.stdout, sys.stdout.buffer)
    if quiet:
        return
    for note in outcome.notes:
        click.echo(f"jac: note: spectrum: {note}", err=True)
    if request.out not in (None, "-"):
        keys = list(outcome.results)
        click.echo(f"wrote {len(keys)} result(s) ({', '.join(keys)}) to {request.out}", err=True)
    if not options["no_timings"]:
        from jaccli.report.render import render_timings

        render_timings(sys.stderr, outcome.timings)


@cli.command(
    epilog="Exit codes: 0 every check that ran passed, 1 a check failed, 2 usage or input "
    "error, or no check could run, 3 the function raised."
)
@function_and_primals
@click.option(
    "--full", is_flag=True, help="Also compare the whole Jacobian with finite differences, column by column."
)
@click.option(
    "--rtol",
    type=click.FloatRange(min=0),
    help="Relative tolerance [default: 1e-3, torch.autograd.gradcheck's].",
)
@click.option("--atol", type=click.FloatRange(min=0), help="Absolute tolerance [default: 1e-5, gradcheck's].")
@click.option(
    "--eps",
    type=click.FloatRange(min=0, min_open=True),
    help="Finite-difference step [default: 1e-6, gradcheck's].",
)
@click.option(
    "--directions",
    type=click.IntRange(min=1),
    default=3,
    show_default=True,
    help="Random directions for the adjoint and finite-difference checks.",
)
@click.option(
    "--order",
    type=click.IntRange(1, 2),
    default=1,
    show_default=True,
    help="1: first derivatives, about 2K+16 function evaluations and 2K+10 jvp/vjp passes for "
    "K --directions (plus the whole Jacobians when small). 2: also second derivatives, 2K more "
    "gradients and 2K Hessian-vector products (K at least 2).",
)
@click.option(
    "--nondet-tol",
    type=click.FloatRange(min=0),
    default=0.0,
    show_default=True,
    help="How far two evaluations at the same point (same --seed) may differ; more is reported as "
    "a nondeterministic function (FAIL).",
)
@sparse_option_group
@module_options
@inputs_and_device
@output_options
@timing_options
@config_option
def check(**options: Any) -> int:
    """Check a function's derivatives: forward vs reverse, the adjoint identity, finite differences.

    Computes in float64 (inputs are upcast; --dtype keeps another, with looser default
    tolerances). Each check is PASS, FAIL (naming the worst entry) or SKIPPED (with the
    reason, e.g. an operator without forward mode). Exit code 1 when any check fails.
    Also: the Taylor remainder (must fall as h^2), vmap against a loop (batching rules),
    repeatability; --order 2 adds second derivatives. Every evaluation runs on torch's
    random stream seeded by --seed.

    \b
    Examples:
      jac check examples/quickstart.py:f -p examples/x.npy
      jac check "examples/mlp.py:model()" -p randn:4 --full
      jac check mymod:layer -p x.npy --wrt params --format json
    """
    from jaccli.pipeline import deliver_check, run_check

    request = _request("check", options)
    quiet = _quiet(options)
    outcome = run_check(request, stdout=sys.stdout.buffer)
    deliver_check(outcome, request, sys.stdout)
    if not quiet and not options["no_timings"]:
        from jaccli.report.render import render_timings

        render_timings(sys.stderr, outcome.timings)
    return 0 if outcome.report.passed else 1


@cli.command(epilog=EPILOG_TAIL)
@function_and_primals
@argnums_option
@click.option("--hessian", is_flag=True, help="The pattern of the Hessian (a one-element output) instead.")
@engine_options
@inputs_and_device
@click.option(
    "-o", "--out", metavar="P.npz", help="Write the pattern and its colourings (scipy.sparse .npz)."
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["text", "json", "yaml"]),
    default="text",
    show_default=True,
    help="How the summary is printed.",
)
@timing_options
@config_option
def sparsity(**options: Any) -> None:
    """Detect a function's sparsity pattern by tracing it, colour it, and save both for --sparsity.

    Prints the pattern's shape, stored entries, colours and any op without a rule (taken to depend
    on everything it reads). The .npz is readable with scipy.sparse.load_npz.

    \b
    Examples:
      jac sparsity examples/stencil.py:smooth -p randn:12 -o P.npz
      jac jacobian examples/stencil.py:smooth -p randn:12 --sparsity P.npz -o J.npz
      jac sparsity examples/quickstart.py:loss -p examples/x.npy --hessian
    """
    from jaccli.sparse.command import render_pattern, run_pattern

    hessian = options.pop("hessian")
    request = _request("sparsity", options)
    quiet = _quiet(options)
    outcome = run_pattern(request, hessian)
    from jaccli.pipeline.delivery import write_timings

    write_timings(outcome.timings, request)  # --timings, as every command writes it
    if not quiet:
        render_pattern(sys.stdout, outcome, request.format)
        if not options["no_timings"]:
            from jaccli.report.render import render_timings

            render_timings(sys.stderr, outcome.timings)


@cli.command()
@report_format_option
@config_option
def info(fmt: str) -> None:
    """Versions of Python, torch and numpy, and the devices jac can use.

    \b
    Examples:
      jac info
      jac info --format json
    """
    from jaccli.cli.info import gather, render

    facts = gather()
    if fmt == "json":
        import json

        click.echo(json.dumps(facts))
    else:
        render(sys.stdout, facts)


@cli.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.argument("config", metavar="CONFIG", type=click.Path(dir_okay=False))
@click.argument("flags", nargs=-1, type=click.UNPROCESSED, metavar="[FLAGS]...")
@click.pass_context
def run(ctx: click.Context, config: str, flags: tuple[str, ...]) -> Any:
    """Run the command a YAML config names, with its function, inputs and options.

    A config holds command, function, primals, tangents, cotangents, kwargs, out, and
    options (the command's long option names). FLAGS override the config's values (a
    repeatable flag such as -p replaces the config's whole list). Relative paths in the
    config resolve against its folder. Any command also takes --config FILE.

    \b
    Examples:
      jac run configs/quickstart-jvp.yaml
      jac run configs/rosenbrock-hessian.yaml -o H.npy
      jac run configs/mlp-jacobian.yaml --dtype float64 --format json
    """
    from jaccli.cli.configs import command_of, missing

    name = command_of(config, [n for n in cli.list_commands(ctx) if n != "run"])
    command = cli.commands[name]
    try:
        sub = command.make_context(name, ["--config", config, *flags], parent=ctx.parent)
    except click.MissingParameter as exc:
        raise missing(config, exc.param) from None
    with sub:
        return command.invoke(sub)


from jaccli.cli.serve import serve  # noqa: E402 - the serve group, defined with its server

cli.add_command(serve)


def main(argv: list[str] | None = None, prog_name: str = "jac") -> None:
    """Run the CLI; every error ends here as one line on stderr and the contract's exit code."""
    from jaccli.errors import ExitCode, JacError
    from jaccli.io import shadowing
    from jaccli.io.streams import ReaderGone

    shadowing.install()  # before any lazy import: a yaml.py in the current folder is not jac's yaml
    Flags.debug = False
    global _ARGV
    _ARGV = [prog_name, *(sys.argv[1:] if argv is None else argv)]
    code: int = ExitCode.OK
    reader_gone = False
    previous = _on_sigterm()
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
    except (BrokenPipeError, ReaderGone):  # the reader of our output went away (| head): end as cat does
        code = ReaderGone.exit_code
        reader_gone = True
    except (KeyboardInterrupt, click.Abort):
        _fail(f"{prog_name}: interrupted (SIGINT); nothing was written")
        code = 130
    except Terminated:
        _fail(f"{prog_name}: terminated (SIGTERM); nothing was written")
        code = 143
    except SystemExit:
        raise
    except Exception as exc:
        from jaccli.errors import describe

        _fail(
            f"{prog_name}: internal error: {describe(exc)}; this is a bug in jac: rerun with "
            "--debug for the traceback and report it"
        )
        code = ExitCode.INTERNAL
    except BaseException as exc:  # GeneratorExit or another BaseException from the user's code
        from jaccli.errors import describe, excerpt

        _fail(
            f"{prog_name}: error: the function raised {excerpt(describe(exc))}, a BaseException "
            "that is not an Exception; raise an Exception subclass instead"
        )
        code = ExitCode.FUNCTION
    finally:
        from jaccli.io import tempfiles

        tempfiles.remove_pending()  # whatever ended the command, no temporary file stays behind
        _restore_sigterm(previous)
    if reader_gone:
        from jaccli.io.streams import end_by_sigpipe

        code = end_by_sigpipe()  # dies by SIGPIPE when this is the process's own standard output
    sys.exit(int(code))


class Terminated(BaseException):
    """SIGTERM, raised where the process is so that the same cleanup runs as for Ctrl-C."""


def _on_sigterm():
    import signal

    def handler(signum, frame):  # noqa: ANN001 - signal's signature
        raise Terminated()

    try:
        return signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread (an embedding application): leave signals alone
        return None


def _restore_sigterm(previous) -> None:  # noqa: ANN001
    if previous is not None:
        import signal

        signal.signal(signal.SIGTERM, previous)


# click >= 8.2 raises this for a group called with no arguments (older clicks print the help)
_NO_ARGS_IS_HELP = getattr(click.exceptions, "NoArgsIsHelpError", ())


def _fail(line: str) -> None:
    if Flags.debug:
        import traceback

        traceback.print_exc()
    from jaccli.errors import one_line

    click.echo(one_line(line), err=True)  # a user value quoted in a message never floods stderr
