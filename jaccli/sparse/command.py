"""``--sparse`` and ``--sparsity`` on jacobian, jacfwd, jacrev and hessian, and ``jac sparsity``.

The phases, after the usual load / read / move / first call: "detect pattern" (or "read
pattern"), "colour", then the first call and the steady-state runs of the compressed products
and their decompression, the function alone, and the move to the host, where the stored values
become a ``scipy.sparse`` CSR matrix.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import IO, Any, BinaryIO

from jaccli import trees
from jaccli.errors import InputError
from jaccli.sparse import compressed
from jaccli.sparse.files import SparseResult

SPARSE_COMMANDS = ("jacfwd", "jacrev", "jacobian", "hessian")
TRACED = "traced (make_fx)"  # the engine of jac sparsity


def _validate(request: Any, commands: tuple[str, ...], torchrun: bool = False) -> None:
    from jaccli.sparse.files import _require_scipy

    if request.command not in commands:
        raise InputError(f"--sparse and --sparsity are for jac {', '.join(commands)}; not {request.command}")
    _require_scipy()
    if request.has_aux:
        raise InputError("--sparse does not take --has-aux; return the output alone")
    if request.wrt != "inputs":
        raise InputError("--sparse differentiates inputs only; leave out --wrt params")
    if request.plot is not None:
        raise InputError("--plot draws dense Jacobians; with --sparse, load J.npz and use matplotlib's spy")
    if request.randomness == "different":
        raise InputError("--sparse needs a deterministic function; leave out --randomness different")
    from jaccli.scale import distributed

    if distributed.launched() and not torchrun:
        raise InputError(f"jac {request.command} --sparse runs as one process: run it without torchrun")


@dataclass
class Problem:
    setup: Any
    argnums: tuple[int, ...]
    sample: list  # the primals of one sample (all of them with no --batch-dim)
    output: Any  # the function's output (one sample's shapes)
    out_leaves: list[tuple[str, Any]]  # floating output leaves (one sample)
    m: int
    n: int


def _problem(request: Any, commands: tuple[str, ...]) -> Problem:
    import torch

    from jaccli.pipeline.problem import argnum_tuple, check_scalar, disciplined, load

    setup = disciplined(load(request, commands), request)
    if setup.profile.random:
        raise InputError("--sparse needs a deterministic function; this one draws random numbers")
    primals, batch = setup.primals, request.batch_dim
    sample_output = setup.output  # of the first sample under --batch-dim
    if request.command == "hessian" or getattr(request, "_hessian", False):
        check_scalar("hessian", sample_output)
    argnums = argnum_tuple(setup.argnums)
    sample = [p.select(batch, 0) for p in primals] if batch is not None else list(primals)
    leaves = [
        (k, t)
        for k, t in trees.leaves(sample_output)
        if isinstance(t, torch.Tensor) and (t.is_floating_point() or t.is_complex())
    ]
    m = sum(t.numel() for _, t in leaves)
    n = sum(sample[a].numel() for a in argnums)
    return Problem(setup, argnums, sample, sample_output, leaves, m, n)


def _pattern(request: Any, problem: Problem, hessian: bool) -> tuple[Any, dict, list[str]]:
    """(pattern, colourings given with it, ops that fell back), detected or read from --sparsity."""
    from jaccli.sparse import files

    timings = problem.setup.timings
    kind = "hessian" if hessian else "jacobian"
    want = (problem.n, problem.n) if hessian else (problem.m, problem.n)
    if request.sparsity:
        with timings.phase("read pattern"):
            given = files.load_pattern(request.sparsity)
        what = "Hessian (inputs x inputs)" if hessian else "Jacobian (output elements x input elements)"
        if given.kind is not None and given.kind != kind:
            raise InputError(
                f"--sparsity {request.sparsity}: a {given.kind} pattern, but jac {request.command} needs a "
                f"{kind} pattern; write one with 'jac sparsity{' --hessian' if hessian else ''}'"
            )
        if tuple(given.matrix.shape) != want:
            raise InputError(
                f"--sparsity {request.sparsity}: the pattern is {given.matrix.shape[0]} x "
                f"{given.matrix.shape[1]} but this function's {what} is {want[0]} x {want[1]}; "
                "detect one for these inputs with 'jac sparsity FUNC -p X -o P.npz'"
            )
        matrix = given.matrix
        if hessian:
            import scipy.sparse as sp

            matrix = sp.csr_matrix(matrix + matrix.T, dtype=bool)
        return matrix, given.colourings, []
    from jaccli.sparse.detect import detect

    with timings.phase("detect pattern"):
        found = detect(problem.setup.fn, problem.sample, problem.argnums, hessian=hessian)
    return (found.hessian if hessian else found.matrix), {}, found.fallbacks


def _colour(mode: str, pattern: Any, given: dict, columns: Any = None) -> Any:
    from jaccli.sparse import colouring

    if mode in given:
        colours = given[mode]
        ok = (
            colouring.valid_symmetric(pattern, colours)
            if mode == "symmetric"
            else colouring.valid_columns(pattern if mode == "forward" else pattern.T.tocsr(), colours)
        )
        if ok:
            return colours
    if mode == "forward":
        return colouring.column_colouring(pattern)
    if mode == "reverse":
        return colouring.row_colouring(pattern, columns)
    return colouring.star_colouring(pattern)


def _choose(request: Any, pattern: Any, given: dict) -> tuple[str, Any, str]:
    """The mode, its colours and a note saying why."""
    command = request.command
    if command == "hessian":
        colours = _colour("symmetric", pattern, given)
        return "symmetric", colours, f"{_count(colours)} Hessian-vector products (star colouring)"
    if command == "jacfwd" or (command == "jacobian" and request.mode == "fwd"):
        colours = _colour("forward", pattern, given)
        why = "jacfwd" if command == "jacfwd" else "--mode fwd"
        return "forward", colours, f"forward: {_count(colours)} JVPs, one per column colour ({why})"
    if command == "jacrev" or (command == "jacobian" and request.mode == "rev"):
        colours = _colour("reverse", pattern, given)
        why = "jacrev" if command == "jacrev" else "--mode rev"
        return "reverse", colours, f"reverse: {_count(colours)} VJPs, one per row colour ({why})"
    fwd = _colour("forward", pattern, given)
    rev = _colour("reverse", pattern, given, fwd)
    if _count(rev) < _count(fwd):
        return (
            "reverse",
            rev,
            (
                f"reverse (--mode auto --sparse: {_count(rev)} row colours against {_count(fwd)} column "
                "colours; fewer products)"
            ),
        )
    return (
        "forward",
        fwd,
        (
            f"forward (--mode auto --sparse: {_count(fwd)} column colours against {_count(rev)} row "
            "colours; fewer products, forward on a tie)"
        ),
    )


def _count(colours: Any) -> int:
    return int(colours.max()) + 1 if len(colours) else 0


def _keys(request: Any, problem: Problem) -> tuple[list[str], list[int], list[int], list[int], list[int]]:
    """Keys, row offsets, column offsets, and per key its row part and column part."""
    many = not isinstance(problem.setup.argnums, int)  # --argnums 0,1 (a tuple): keys .0, .1
    sizes_in = [problem.sample[a].numel() for a in problem.argnums]
    cols = [0]
    for s in sizes_in:
        cols.append(cols[-1] + s)
    if request.command == "hessian":
        keys, br, bc = [], [], []
        for i in range(len(problem.argnums)):
            for j in range(len(problem.argnums)):
                keys.append(f"hessian.{i}.{j}" if many else "hessian")
                br.append(i)
                bc.append(j)
        return keys, cols, cols, br, bc
    rows = [0]
    keys, br, bc = [], [], []
    for r, (out_key, leaf) in enumerate(problem.out_leaves):
        rows.append(rows[-1] + leaf.numel())
        base = trees.join("jacobian", out_key)
        for position in range(len(problem.argnums)):
            keys.append(trees.join(base, str(position)) if many else base)
            br.append(r)
            bc.append(position)
    return keys, rows, cols, br, bc


def run_sparse(request: Any) -> Any:
    """``jac jacobian|jacfwd|jacrev|hessian --sparse``: an Outcome whose ``sparse`` holds the result."""
    from jaccli.pipeline.compute import function_alone
    from jaccli.pipeline.delivery import host_array

    _validate(request, SPARSE_COMMANDS, torchrun=True)
    import scipy.sparse as sp
    import torch

    from jaccli.pipeline.delivery import footer
    from jaccli.pipeline.request import Outcome, check_request

    check_request(request)
    fmt = _format(request)
    if fmt == "npy":
        raise InputError(
            "a sparse result is written as .npz (scipy.sparse.save_npz), .json or .yaml, not .npy"
        )
    problem = _problem(request, SPARSE_COMMANDS)
    setup, timings = problem.setup, problem.setup.timings
    hessian = request.command == "hessian"
    keys, rows, cols, br, bc = _keys(request, problem)
    if request.select is not None and request.select not in keys:
        raise InputError(f"--select {request.select!r}: no such result; the keys are {', '.join(keys)}")
    pattern, given, fallbacks = _pattern(request, problem, hessian)
    with timings.phase("colour"):
        mode, colours, why = _choose(request, pattern, given)
        plan = compressed.plan(mode, pattern, colours)
    if fallbacks:
        timings.notes.append(
            "--sparse: no sparsity rule for " + ", ".join(fallbacks) + "; their outputs were taken to depend "
            "on every element they read (the pattern may hold more entries than needed)"
        )
    itemsize = setup.primals[0].element_size()
    chunk = request.chunk_size or compressed.chunk_for(
        request.max_memory, plan.count, problem.m, problem.n, itemsize
    )
    shapes = [tuple(problem.sample[a].shape) for a in problem.argnums]
    sizes = [problem.sample[a].numel() for a in problem.argnums]
    engine = compressed.Compressed(setup.fn, problem.argnums, sizes, shapes, plan, chunk)
    primals, batch = setup.primals, request.batch_dim
    meta = SparseResult(None, keys, rows, cols, br, bc, plan.count, mode, None)
    if _streams(request, fmt, plan, problem, itemsize):
        return _run_streamed(request, problem, plan, engine, meta, itemsize, why)

    if batch is None:

        def values_of(*p: Any) -> Any:
            return engine.values(p)
    else:
        engine.vmapped = True

        def values_of(*p: Any) -> Any:
            return torch.func.vmap(lambda *q: engine.values(q), in_dims=batch)(*p)

    def compute() -> Any:
        return values_of(*primals)

    from jaccli.autodiff.transforms import guarded

    with timings.phase("first call"):
        try:
            values = guarded(compute, request.command)
        except Exception as exc:
            from jaccli.autodiff.transforms import failure_reason

            # --mode auto: an op without a forward-mode formula; the row colouring needs none
            auto = request.command == "jacobian" and request.mode == "auto" and request.engine != "func"
            if not (auto and mode == "forward" and failure_reason(exc.__cause__ or exc) == "forward"):
                raise
            colours = _colour("reverse", pattern, given, plan.colours)
            mode, plan = "reverse", compressed.plan("reverse", pattern, colours)
            why = f"reverse: {plan.count} VJPs (--mode auto --sparse: forward mode failed here)"
            timings.notes.append(
                "--sparse: an operator has no forward-mode formula; fell back to reverse mode"
            )
            engine.plan = plan
            engine._seeds.clear()
            values = guarded(compute, request.command)
    first = timings.get("first call").times[0]
    steady, label = compute, ""
    if request.repeat or request.compile:  # steady-state runs asked for: worth a trace
        steady, label = _steady(request, setup, compute, values_of, values)
    timings.series("steady-state compute", steady, request.repeat, request.warmup, per_run_s=first)
    function_alone(request, setup)
    with timings.phase("move to host"):
        host, dtype = host_array(values, "the sparse values")
        p = plan.pattern
        if batch is None:
            matrix = sp.csr_matrix((host, p.indices, p.indptr), shape=p.shape)
            samples = None
        else:
            samples = host.shape[0]
            matrix = sp.block_diag(
                [sp.csr_matrix((host[s], p.indices, p.indptr), shape=p.shape) for s in range(samples)],
                format="csr",
            )
        result = SparseResult(matrix, keys, rows, cols, br, bc, plan.count, mode, samples)
        if request.select is not None:
            result = result.selected(request.select)
        result.notes.append(f"mode: {why}")
        if batch is not None:
            result.notes.append(
                "--batch-dim: the file holds the samples' matrices block-diagonally, sample after sample"
            )
        results = {k: result.selected(k).matrix.data for k in result.keys}
    timings.footer["mode"] = f"{why}"
    engine_label = f"sparse, {plan.count} {_product_name(mode)}" + (f"; {label}" if label else "")
    footer(timings, request.command, engine_label, setup)
    outcome = Outcome(results, {}, {k: dtype for k in results}, timings)
    outcome.sparse, outcome.writer = result, deliver_sparse
    return outcome


def _streams(request: Any, fmt: str, plan: Any, problem: Problem, itemsize: int) -> bool:
    """Whether the result goes to the file a colour block at a time (see jaccli.sparse.streamed)."""
    from jaccli.scale import distributed, memory
    from jaccli.sparse import streamed

    if distributed.launched():
        streamed.refuse(request, "under torchrun")
        return True
    samples = 1 if request.batch_dim is None else problem.setup.primals[0].shape[request.batch_dim]
    need = streamed.in_memory_bytes(plan, problem.m, problem.n, itemsize, samples)
    if need <= memory.allowed_bytes(request.max_memory):
        return False
    if (
        fmt == "npz"
        and request.out not in (None, "-")
        and request.batch_dim is None
        and request.select is None
    ):
        return True
    return False  # computed in memory, in blocks of colours (compressed.chunk_for)


def _run_streamed(
    request: Any, problem: Problem, plan: Any, engine: Any, meta: SparseResult, itemsize: int, why: str
) -> Any:
    """Compute into ``-o PATH.npz`` a block of colours at a time; colours shard over torchrun's ranks."""
    from jaccli.io.npyfile import check_room
    from jaccli.pipeline.compute import function_alone
    from jaccli.pipeline.delivery import footer
    from jaccli.pipeline.request import Outcome
    from jaccli.report.record import for_output
    from jaccli.report.timing import Phase
    from jaccli.scale import distributed, memory
    from jaccli.scale.streaming import Streamed
    from jaccli.sparse import streamed

    setup, timings = problem.setup, problem.setup.timings
    if request.compile:
        timings.notes.append(
            "--sparse: written a block of colours at a time, computed once: --compile was not used"
        )
    allowed = memory.allowed_bytes(request.max_memory)
    where = "--max-memory" if request.max_memory is not None else "80% of the memory free now"
    chunk = streamed.colour_chunk(plan, problem.m, problem.n, itemsize, allowed, request.chunk_size)
    nnz = plan.pattern.nnz
    if distributed.rank() == 0:  # the values' file and the .npz, side by side until the end
        check_room(request.out, 2 * nnz * (itemsize + plan.pattern.indices.itemsize))
    engine_label = f"sparse, {plan.count} {_product_name(plan.mode)}"
    dtype_name = str(setup.primals[0].dtype).replace("torch.", "")
    record = for_output(  # before the write: the inputs as read; the footer is not set yet
        request, timings, "npz", engine=engine_label, device=str(setup.device), dtype=dtype_name
    )
    session = distributed.start(setup.device) if distributed.launched() else distributed.Single()
    try:
        report = streamed.write(
            engine,
            setup.primals,
            plan,
            request.out,
            meta,
            chunk,
            session,
            timings.sync,
            request.command,
            record,
        )
    finally:
        session.close()
    timings.phases.append(Phase("steady-state compute", [report["compute_s"]], is_series=True))
    function_alone(request, setup)  # --batch-dim is refused when streaming
    timings.phases.append(Phase("write", [report["write_s"]]))
    ranks = f"; {session.world} ranks, the times are rank 0's share" if session.world > 1 else ""
    if distributed.launched():
        memory_note = f"memory: streamed to {request.out}, colours shared over {session.world} ranks"
    else:
        memory_note = streamed.note(plan, chunk, request.out, problem.m, problem.n, itemsize, allowed, where)
    timings.footer["memory"] = f"{memory_note}; steady-state compute is that one run, not repeated{ranks}"
    timings.footer["mode"] = why
    footer(timings, request.command, engine_label, setup)
    key = ", ".join(meta.keys)
    dtype = report["dtype"]
    outcome = Outcome({}, {}, {key: dtype}, timings)
    outcome.streamed = Streamed(
        key, request.out, (nnz,), dtype, report["non_finite"], chunks=report["chunks"]
    )
    return outcome


def _steady(request: Any, setup: Any, compute: Any, values_of: Any, values: Any) -> tuple[Any, str]:
    """The steady-state callable and its label: the traced (or compiled) graph, else ``compute``."""
    from jaccli.sparse import kernel

    timings = setup.timings
    if setup.profile is not None and setup.profile.changes_state:
        timings.notes.append(
            "--sparse: the function changes state it reads (a module's buffers); the steady state "
            "ran eager, not traced" + ("; --compile was not used" if request.compile else "")
        )
        return compute, ""
    with timings.phase("compile" if request.compile else "trace"):
        cap = None if request.max_memory is None else max(1, request.max_memory // 16)  # folded constants
        steady, why, label = kernel.trace(
            values_of, setup.primals, values, compile=request.compile, fold_cap=cap
        )
    if steady is None:
        timings.notes.append(
            f"--sparse: the steady state ran eager: {why}"
            + ("; --compile was not used" if request.compile else "")
        )
        return compute, ""
    if why is not None:
        timings.notes.append(f"--sparse --compile: {why}")
    return steady, label


def _product_name(mode: str) -> str:
    return {"forward": "JVPs (column colouring)", "reverse": "VJPs (row colouring)"}.get(
        mode, "Hessian-vector products (star colouring)"
    )


def _format(request: Any) -> str:
    from jaccli.pipeline.request import output_format

    return output_format(request)


def deliver_sparse(outcome: Any, request: Any, stdout: IO[bytes], text_stdout: IO[str]) -> None:
    from jaccli.pipeline.delivery import write_timings
    from jaccli.report.record import for_output
    from jaccli.sparse import files

    with outcome.timings.phase("write"):
        record = for_output(request, outcome.timings, _format(request))
        files.write(request.out, _format(request), outcome.sparse, stdout, text_stdout, record)
    write_timings(outcome.timings, request)


# --- jac sparsity ------------------------------------------------------------------------------


@dataclass
class PatternOutcome:
    summary: dict[str, Any]
    timings: Any


def run_pattern(request: Any, hessian: bool, stdout: BinaryIO | None = None) -> PatternOutcome:
    """``jac sparsity``: detect the pattern (and colour it), write it with -o P.npz."""
    import contextlib
    import sys

    from jaccli.pipeline.delivery import footer

    request = replace(request, command="hessian" if hessian else "jacobian")
    _validate(request, SPARSE_COMMANDS)
    if request.out not in (None, "-"):
        from jaccli.io import outputs

        if not request.out.endswith(".npz"):
            raise InputError(f"-o {request.out}: a pattern is written as .npz (scipy.sparse's format)")
        outputs.check_destination(request.out)
    if request.timings_path is not None:  # checked before any work, as every command does
        from jaccli.io import outputs
        from jaccli.pipeline.request import TIMINGS_FORMATS

        outputs.format_for_path(request.timings_path, "--timings", TIMINGS_FORMATS)
        outputs.check_destination(request.timings_path, "--timings")
    if request.format not in ("text", "json", "yaml"):
        raise InputError(
            f"jac sparsity prints a summary: use --format text, json or yaml, not {request.format}"
        )
    if request.sparsity:
        raise InputError("jac sparsity detects a pattern; --sparsity gives one: leave it out")
    with contextlib.redirect_stdout(sys.stderr):
        problem = _problem(request, SPARSE_COMMANDS)
        timings = problem.setup.timings
        pattern, _, fallbacks = _pattern(request, problem, hessian)
        with timings.phase("colour"):
            if hessian:
                colourings = {"symmetric": _colour("symmetric", pattern, {})}
            else:
                fwd = _colour("forward", pattern, {})
                colourings = {"forward": fwd, "reverse": _colour("reverse", pattern, {}, fwd)}
        if request.out not in (None, "-"):
            from jaccli.report.record import for_output
            from jaccli.sparse import files

            with timings.phase("write"):  # the footer comes later: the record is told what it will say
                dtype = str(problem.setup.primals[0].dtype).replace("torch.", "")
                facts = {"engine": TRACED, "device": str(problem.setup.device), "dtype": dtype}
                files.save_pattern(
                    request.out,
                    "hessian" if hessian else "jacobian",
                    pattern,
                    colourings,
                    fallbacks,
                    for_output(request, timings, "npz", command="sparsity", **facts),
                )
        setup = problem.setup
        timings.series("function alone", lambda: setup.fn(*setup.primals), request.repeat, request.warmup)
        footer(timings, "sparsity", TRACED, setup)
    m, n = pattern.shape
    summary = {
        "kind": "hessian" if hessian else "jacobian",
        "shape": [int(m), int(n)],
        "nnz": int(pattern.nnz),
        "density": pattern.nnz / (m * n) if m * n else 0.0,
        "colours": {
            {"forward": "columns", "reverse": "rows", "symmetric": "star"}[k]: _count(v)
            for k, v in colourings.items()
        },
        "fallbacks": fallbacks,
    }
    if request.out not in (None, "-"):
        summary["written"] = request.out
    if request.format in ("json", "yaml"):
        from jaccli.report.record import for_output

        summary["record"] = for_output(request, timings, request.format)
    return PatternOutcome(summary, timings)


def render_pattern(stream: IO[str], outcome: PatternOutcome, fmt: str) -> None:
    from jaccli.io import outputs

    s = outcome.summary
    if fmt != "text":
        stream.write(outputs.dump_document(s, fmt))
        return
    what = (
        "Hessian (input x input elements)" if s["kind"] == "hessian" else "Jacobian (output x input elements)"
    )
    stream.write(
        f"pattern: {what} {s['shape'][0]} x {s['shape'][1]}, {s['nnz']} stored ({s['density']:.2%})\n"
    )
    colours = ", ".join(f"{v} {k}" for k, v in s["colours"].items())
    stream.write(f"colours: {colours}\n")
    fell = ", ".join(s["fallbacks"]) if s["fallbacks"] else "none"
    stream.write(f"ops without a rule (depend on all they read): {fell}\n")
    stream.flush()
