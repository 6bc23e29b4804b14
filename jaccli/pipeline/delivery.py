"""Stage 4, delivery: the result on the host under the contract's keys, then written.

:func:`to_host` turns a :class:`~jaccli.pipeline.compute.Result` into an
:class:`~jaccli.pipeline.request.Outcome` (numpy arrays, renamed keys, ``--flatten``, the notes
and the timing footer); :func:`deliver` writes it where the request says (a file, standard
output as text or bytes, ``--plot``, ``--timings``). Nothing is written before this stage.
"""

from __future__ import annotations

from dataclasses import replace
from typing import IO, Any

from jaccli import trees
from jaccli.pipeline.compute import Result
from jaccli.pipeline.plan import Plan
from jaccli.pipeline.problem import Problem
from jaccli.pipeline.request import TIMINGS_FORMATS, Outcome, Request, output_format
from jaccli.report.timing import Timings


def to_host(request: Request, problem: Problem, plan: Plan, result: Result) -> Outcome:
    """The results as numpy arrays keyed as the contract names them, with their notes."""
    from jaccli.autodiff.trust import left_graph, zero_note

    timings, command = problem.timings, request.command
    if result.streamed is not None:  # written while computed
        report = result.streamed
        _finish(timings, command, result.engine, problem)
        return Outcome({}, {}, {report.key: report.dtype}, timings, streamed=report)
    layout, rename = plan.layout, plan.rename
    with timings.phase("move to host"):
        flat = {rename(k): v for k, v in trees.leaves(result.tree)}
        if list(flat) != plan.keys:  # layout() and compute() must agree: a bug in jac if not
            raise AssertionError(f"result keys {list(flat)} differ from the layout {plan.keys}")
        results, dtypes = {}, {}
        for key in plan.chosen:
            results[key], dtypes[key] = host_array(flat[key], key)
        if problem.names is not None:
            names = problem.names
            layout = [
                (k, replace(i, input_label=f"parameter {names[i.input_index]}") if i else None)
                for k, i in layout
            ]
        notes = _notes(layout, rename, results, request.flatten, request.batch_dim, result.mode_note)
        zeros = zero_note(results) if request.batch_dim is None else None
        if zeros and left_graph(problem.fn, problem.primals, request.has_aux):
            timings.remarks.append(zeros)
    if result.mode_note:
        timings.footer["mode"] = result.mode_note
    _finish(timings, command, result.engine, problem)
    axes = {k: a for k, a in plan.axes.items() if k in results}
    return Outcome(results, notes, dtypes, timings, axes)


def _finish(timings: Timings, command: str, engine: str, problem: Problem) -> None:
    getattr(problem.fn, "restore_state", lambda: None)()  # a module's buffers as the user gave them
    footer(timings, command, engine, problem)


def footer(timings: Timings, command: str, engine: str, problem: Problem) -> None:
    """The timing table's footer: what ran, where, in which dtype, and the cost ratio."""
    import torch

    timings.footer.update(
        command=command,
        engine=engine,
        device=str(problem.device),
        dtype=str(problem.primals[0].dtype).replace("torch.", ""),
        torch=str(torch.__version__),
        cost_ratio=timings.ratio("steady-state compute", "function alone"),
    )


def host_array(value: Any, key: str) -> tuple[Any, str]:
    """A numpy array from a tensor (or a plain number in aux), and the dtype computed in."""
    import numpy as np
    import torch

    if isinstance(value, torch.Tensor):
        from jaccli.autodiff.trust import materialize

        dtype = str(value.dtype).replace("torch.", "")
        tensor = materialize(value.detach()).cpu()
        if tensor.dtype == torch.bfloat16:
            tensor = tensor.float()  # numpy has no bfloat16
        return tensor.resolve_conj().numpy(), dtype
    if isinstance(value, (bool, int, float)) or (
        isinstance(value, np.ndarray) and value.dtype.kind in "biuf"
    ):
        array = np.asarray(value)
        return array, str(array.dtype)
    from jaccli.errors import FunctionError, kind_of

    raise FunctionError(f"{key} is {kind_of(value)}; jac writes tensors and numbers only")


def _notes(
    layout, rename, results, flatten: bool, batch: int | None, mode_note: str | None
) -> dict[str, str]:
    """Per Jacobian key: what its shape means (and ``--flatten``'s reshape, done here)."""
    from jaccli.report.render import jacobian_note

    notes = {}
    for key, info in layout:
        key = rename(key)
        if info is None or key not in results:
            continue
        if flatten:
            lead = results[key].shape[:1] if batch is not None else ()
            results[key] = results[key].reshape(lead + info.matrix_shape)
        lines = [jacobian_note(info, flatten)]
        if batch is not None:
            lines.append("a batch dimension leads: one Jacobian per sample")
        if mode_note:
            lines.append(mode_note)
        notes[key] = "\n".join(lines)
    return notes


def deliver(outcome: Outcome, request: Request, stdout: IO[bytes], text_stdout: IO[str]) -> None:
    """Write the results where the request says (timed as the 'write' phase)."""
    from jaccli.io import outputs
    from jaccli.report.record import for_output
    from jaccli.report.render import render_text
    from jaccli.scale.distributed import rank

    if outcome.writer is not None:
        return outcome.writer(outcome, request, stdout, text_stdout)
    fmt = output_format(request)
    if outcome.streamed is not None:  # written while computed (its write is timed already)
        if rank() == 0:
            write_timings(outcome.timings, request)
        return
    with outcome.timings.phase("write"):
        record = for_output(request, outcome.timings, fmt)  # before any write: inputs as read
        if request.out is not None and request.out != "-":
            outputs.write_results(request.out, fmt, outcome.results, record)
        elif fmt == "text":
            render_text(text_stdout, outcome.results, outcome.notes, outcome.dtypes, outcome.axes)
        else:
            outputs.write_stream(stdout, fmt, outcome.results, record)
        if request.plot is not None:
            from jaccli.report.pictures import write_plot

            write_plot(request.plot, outcome.results, outcome.axes)
    write_timings(outcome.timings, request)


def check_footer(timings: Timings, command: str, problem: Problem, dtype: str, request: Request) -> None:
    """The function alone, timed, and the footer of a check's table (no derivative-to-function
    ratio: a check runs many derivatives)."""
    import torch

    timings.series("function alone", lambda: problem.fn(*problem.primals), request.repeat, request.warmup)
    device, version = str(problem.device), str(torch.__version__)
    timings.footer.update(command=command, engine="torch.func", device=device, dtype=dtype, torch=version)


def write_timings(timings: Timings, request: Request) -> None:
    """``--timings PATH``: the table as JSON or YAML, atomically."""
    if request.timings_path is None:
        return
    from jaccli.io import outputs
    from jaccli.report.record import for_output

    doc = {**timings.as_dict(), "record": for_output(request, timings)}
    fmt = outputs.format_for_path(request.timings_path, "--timings", TIMINGS_FORMATS)
    outputs.atomic_write(request.timings_path, lambda fh: fh.write(outputs.dump_document(doc, fmt).encode()))
