"""Click parameter types and the option groups every transform command shares.

Nothing here imports torch or numpy: these run for ``--help`` and usage errors too.
"""

from __future__ import annotations

import re
from typing import Any, Callable

import click

FLOAT_DTYPES = ("float16", "bfloat16", "float32", "float64")
OUTPUT_FORMATS = ("text", "json", "yaml", "npz", "npy")


class FuncType(click.ParamType):
    """``mod:name``, ``path/file.py:name``, ``mod:Obj.attr``, ``mod:factory()``."""

    name = "FUNC"

    def convert(self, value: Any, param: Any, ctx: Any) -> str:
        from jaccli.errors import InputError
        from jaccli.io.loading import parse_spec

        try:
            parse_spec(value)
        except InputError as exc:
            self.fail(str(exc), param, ctx)
        return value


class DeviceType(click.ParamType):
    name = "DEVICE"

    def convert(self, value: Any, param: Any, ctx: Any) -> str:
        from jaccli.autodiff.devices import DEVICE_PATTERN

        if not DEVICE_PATTERN.match(value):
            self.fail(f"{value!r} is not a device; use cpu, cuda, cuda:N or auto", param, ctx)
        return value


class ArgnumsType(click.ParamType):
    """``0`` (an int, as torch.func's ``argnums=0``) or ``0,2`` / ``0,`` (a tuple)."""

    name = "N[,N...]"

    def convert(self, value: Any, param: Any, ctx: Any) -> int | tuple[int, ...]:
        if isinstance(value, (int, tuple)):
            return value
        text = value.replace(" ", "")
        if not re.fullmatch(r"-?\d+(,-?\d+)*,?", text):
            self.fail(f"{value!r}: give an index such as 0, or several such as 0,2", param, ctx)
        parts = [int(p) for p in text.split(",") if p]
        return parts[0] if "," not in text else tuple(parts)


class KwargType(click.ParamType):
    name = "NAME=VALUE"

    def convert(self, value: Any, param: Any, ctx: Any) -> tuple[str, Any]:
        if isinstance(value, tuple):
            return value
        from jaccli.errors import InputError
        from jaccli.io.loading import parse_kwarg

        try:
            return parse_kwarg(value)
        except InputError as exc:
            self.fail(str(exc), param, ctx)


class SizeType(click.ParamType):
    """A memory size: 8G, 512MiB, 1.5GB, 1e9 (bytes); K, M, G, T are powers of 1024."""

    name = "SIZE"
    _units = {"": 1, "b": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}

    def convert(self, value: Any, param: Any, ctx: Any) -> int:
        if isinstance(value, int):
            return value
        match = re.fullmatch(r"\s*([0-9.eE+]+)\s*([kKmMgGtT]?)(i?[bB])?\s*", str(value))
        try:
            number = float(match.group(1)) if match else -1.0
        except ValueError:
            number = -1.0
        if number <= 0:
            self.fail(f"{value!r} is not a size; write e.g. 8G, 512M or 1e9", param, ctx)
        return int(number * self._units[match.group(2).lower()])


class Flags:
    """Process-wide switches set while parsing (read by the error handler in cli.main)."""

    debug = False


def _set_debug(ctx: click.Context, param: click.Parameter, value: bool) -> bool:
    if value:
        Flags.debug = True
    return value


def _stack(*decorators: Callable) -> Callable:
    def apply(fn: Callable) -> Callable:
        for decorator in reversed(decorators):
            fn = decorator(fn)
        return fn

    return apply


def array_option(short: str, long: str, help_text: str, required: bool = False) -> Callable:
    return click.option(
        short,
        long,
        "values_" + long.strip("-"),
        multiple=True,
        required=required,
        metavar="SOURCE",
        help=help_text,
    )


SOURCE_HELP = (
    "a .npy/.npz/.yaml/.json file, '-' for stdin, an inline YAML literal such as "
    "'[1.0, 2.0]', or ones, zeros, randn"
)

function_and_primals = _stack(
    click.argument("func", type=FuncType(), metavar="FUNC"),
    array_option(
        "-p",
        "--primals",
        f"One positional argument of FUNC, repeatable: {SOURCE_HELP} (primals need a shape: "
        "randn:3,2). An .npz or YAML mapping gives one argument per array.",
        required=True,
    ),
    click.option(
        "--kwarg",
        "kwargs",
        multiple=True,
        type=KwargType(),
        help="Keyword argument NAME=VALUE, VALUE read as YAML (never differentiated). Repeatable.",
    ),
    click.option("--has-aux", is_flag=True, help="FUNC returns (output, aux); aux is passed through."),
    click.option(
        "--strict",
        is_flag=True,
        help="An output that does not depend on a differentiated input is an error, not zeros.",
    ),
)

inputs_and_device = _stack(
    click.option(
        "--dtype",
        type=click.Choice(FLOAT_DTYPES),
        help="Cast all floating inputs (default: .npy keeps its dtype; YAML and literals float32).",
    ),
    click.option(
        "--device",
        default="cpu",
        show_default=True,
        type=DeviceType(),
        help="cpu, cuda, cuda:N, or auto (CUDA when available).",
    ),
    click.option("--seed", default=0, show_default=True, type=click.IntRange(min=0), help="Seed for randn."),
    click.option(
        "--max-memory",
        type=SizeType(),
        metavar="SIZE",
        help="Memory the results may take (8G, 512M): larger Jacobians are computed in chunks, or "
        "streamed into -o J.npy; others are refused before computing [default: 80% of free memory].",
    ),
)

output_options = _stack(
    click.option(
        "-o",
        "--out",
        metavar="PATH",
        help="Write all results to .npz, .npy, .yaml or .json (atomically); '-' for stdout.",
    ),
    click.option(
        "--format",
        "fmt",
        type=click.Choice(OUTPUT_FORMATS),
        default="text",
        show_default=True,
        help="What goes to standard output when there is no -o (or with -o -).",
    ),
    click.option("--select", metavar="KEY", help="Keep only the result KEY (e.g. jvp, vjp.1, jacobian)."),
)

timing_options = _stack(
    click.option(
        "--repeat",
        type=click.IntRange(min=0),
        metavar="N",
        help="Timed steady-state runs [default: up to 5 within about 1 s].",
    ),
    click.option(
        "--warmup", type=click.IntRange(min=0), metavar="K", help="Untimed runs before them [default: 1]."
    ),
    click.option(
        "--timings", "timings_path", metavar="PATH", help="Also write the timing table as .json or .yaml."
    ),
    click.option("--no-timings", is_flag=True, help="Leave the timing table out."),
    click.option("-q", "--quiet", is_flag=True, help="Print nothing but results and errors."),
    click.option(
        "--debug",
        is_flag=True,
        is_eager=True,
        expose_value=False,
        callback=_set_debug,
        help="Show the full traceback on errors.",
    ),
)

engine_options = _stack(
    click.option(
        "--engine",
        type=click.Choice(["auto", "func", "autograd"]),
        default="auto",
        show_default=True,
        help="torch.func, torch.autograd, or auto: torch.func, falling back (and saying so) when an "
        "operator has no forward-mode formula or vmap cannot batch the function.",
    ),
    click.option(
        "--compile",
        is_flag=True,
        help="Trace the transform once and compile it with TorchInductor (a C++ compiler on the CPU): "
        "seconds of compiling, for faster steady-state runs; falls back, with a note, if it cannot.",
    ),
    click.option(
        "--batch-dim",
        type=int,
        metavar="N",
        help="The primals carry a batch along dimension N: derivatives per sample, batch first.",
    ),
)

module_options = _stack(
    click.option(
        "--wrt",
        type=click.Choice(["inputs", "params"]),
        default="inputs",
        show_default=True,
        help="Differentiate an nn.Module with respect to its inputs or its parameters.",
    ),
    click.option(
        "--state",
        metavar="PATH",
        help="Load an nn.Module's parameters first: a .pt state_dict (weights only) or an .npz.",
    ),
)

argnums_option = click.option(
    "--argnums",
    type=ArgnumsType(),
    default="0",
    show_default=True,
    help="Which primal(s) to differentiate: 0, or several as 0,2 (keys jacobian.0, jacobian.1).",
)
randomness_option = click.option(
    "--randomness",
    type=click.Choice(["error", "different", "same"]),
    default="same",
    show_default=True,
    help="How random operations behave under vmap (torch.func's meaning). jac runs the function on "
    "one random stream seeded by --seed, so 'same' gives every evaluation the same draws; 'different' "
    "draws anew per row; 'error' refuses random operations under vmap.",
)
chunk_size_option = click.option(
    "--chunk-size",
    type=click.IntRange(min=1),
    metavar="N",
    help="Reverse mode computes N rows at a time (less memory; torch.func's meaning).",
)

plot_option = click.option(
    "--plot",
    metavar="PATH",
    help="Also draw each Jacobian as a heatmap into PATH (.png, .svg or .pdf; needs jaccli[plot]).",
)

jacobian_options = _stack(
    argnums_option,
    plot_option,
    click.option(
        "--flatten",
        is_flag=True,
        help="Write each Jacobian as a 2-D matrix: output elements x input elements.",
    ),
)


def _apply_config(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
    """Eager, so the config's values are in place as defaults before any other option is read."""
    if value is not None:
        from jaccli.cli.configs import defaults

        ctx.default_map = {**(ctx.default_map or {}), **defaults(value, ctx)}


report_format_option = click.option(  # jac info, jac serve status: a report, not results
    "--format",
    "fmt",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    help="text for people, json for scripts.",
)
config_option = click.option(
    "--config",
    metavar="FILE",
    type=click.Path(dir_okay=False),
    is_eager=True,
    expose_value=False,
    callback=_apply_config,
    help="Read this command's options from a YAML config (see 'jac run'); flags given here override it.",
)
