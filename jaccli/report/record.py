"""The reproducibility record: what a machine-readable output says about how it was made.

Every result document (``--format json|yaml``, ``-o r.json|yaml``) carries it under the
reserved key ``__jac__``; every ``.npz`` result, sparse result and pattern file as an entry
``__jac__``, the record as JSON text in a 0-d numpy string (``allow_pickle=False`` reads it);
``--timings`` files and ``jac check`` / ``jac sparsity`` reports under ``record``. jac's own
input readers skip ``__jac__``, so a result file still feeds the next command. A ``.npy``
holds one array and nothing else: ``--timings`` carries the record then. See
docs/reproducibility.md.

The record holds the command line (and ``reproduce``, a line that reruns it), the seed, the
dtype, the device and its name, the route that ran and the routes it beat with their
first-call times, the sha256 of the function's file and of every input file, and the
environment (:func:`environment`, also ``jac info --format json``). It is made once per
command, before anything is written, so an input overwritten by an output is hashed as read.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shlex
import sys
from typing import Any

from jaccli.io.outputs import RECORD_KEY as KEY  # the reserved key in result files

VERSION = 1  # of the record's layout
_CHUNK = 1 << 20


def environment() -> dict[str, Any]:
    """What jac runs on: versions, torch's build, the CPU and the threads torch uses."""
    import numpy
    import torch

    from jaccli import __version__

    cuda = torch.version.cuda
    return {
        "jac": __version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu": cpu_model(),
        "threads": torch.get_num_threads(),
        "torch": str(torch.__version__),
        "torch_cuda": cuda,
        "torch_git": getattr(torch.version, "git_version", None),
        # only where CUDA is in use already: asking earlier would start the driver (a forking
        # jac server cannot share it)
        "cudnn": torch.backends.cudnn.version() if cuda and torch.cuda.is_initialized() else None,
        "numpy": numpy.__version__,
    }


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo on Linux), else what ``platform`` says."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                key, sep, value = line.partition(":")
                if sep and key.strip() in ("model name", "Model", "Hardware", "cpu model"):
                    return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def device_name(device: str | None) -> str | None:
    """``cuda:N``: the GPU's name; ``cpu``: the CPU's model."""
    if device is None:
        return None
    if device.startswith("cuda"):
        import torch

        try:
            index = int(device.split(":")[1]) if ":" in device else torch.cuda.current_device()
            return torch.cuda.get_device_name(index)
        except Exception:  # noqa: BLE001 - a name is a courtesy; the device string stays
            return None
    if device == "cpu":
        return cpu_model()
    return None


def record(request: Any, timings: Any = None, **facts: Any) -> dict[str, Any]:
    """The record of one command (made once and kept on ``timings``). ``facts`` stand in for
    footer entries not set yet when a file is written early (engine, device, dtype)."""
    kept = getattr(timings, "record", None)
    if kept is not None:
        return kept
    footer = {**(getattr(timings, "footer", None) or {}), **facts}
    argv = getattr(request, "argv", None)
    cwd = os.getcwd()
    device = footer.get("device")
    route = footer.get("engine")
    trial = dict(getattr(timings, "routes", None) or {})
    fields = python_fields(request) if argv is None else None
    doc: dict[str, Any] = {
        "record": VERSION,
        "command": footer.get("command", request.command),
        "argv": list(argv) if argv is not None else None,
        "cwd": cwd,
        "reproduce": reproduce(argv, cwd) if argv is not None else _python_line(request, dict(fields)),
    }
    if fields is not None:
        doc["python_api"] = fields
    doc.update(
        function=function(request.func),
        inputs=inputs(request, argv),
        seed=request.seed,
        dtype=footer.get("dtype"),
        device=device,
        device_name=device_name(device),
        route=route,
        trial=trial,  # route -> seconds of its first call: every route the trial timed
        beat=[r for r in trial if r != route],
        chosen_by="trial" if trial else "plan",  # a trial runs with --repeat N and --engine auto
        fallbacks=list(getattr(timings, "notes", None) or []),
    )
    for extra in ("mode", "memory"):
        if footer.get(extra):
            doc[extra] = footer[extra]
    doc["environment"] = environment()
    if timings is not None and hasattr(timings, "record"):
        timings.record = doc
    return doc


def reproduce(argv: list[str], cwd: str) -> str:
    """A shell line that reruns the command from where it ran."""
    return f"cd {shlex.quote(cwd)} && {shlex.join(argv)}"


def sha256_file(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def _file_entry(path: str) -> dict[str, Any]:
    entry: dict[str, Any] = {"file": os.path.abspath(path)}
    try:
        entry["bytes"] = os.path.getsize(path)
        entry["sha256"] = sha256_file(path)
    except OSError as exc:
        entry["sha256"] = None
        entry["why"] = f"cannot be read now: {exc.strerror or exc}"
    return entry


def function(func: Any) -> dict[str, Any]:
    """FUNC and the file that defines it (only that file is hashed, not what it imports)."""
    if isinstance(func, str):
        entry: dict[str, Any] = {"spec": func}
        path = _spec_file(func)
    else:
        entry = {"spec": f"{_qualified(func)} (a Python object)"}
        path = _object_file(func)
    if path is None:
        entry.update(file=None, sha256=None, why="no source file (a built-in or a module without __file__)")
        return entry
    entry.update(_file_entry(path))
    return entry


def _spec_file(text: str) -> str | None:
    from jaccli.io.loading import parse_spec

    try:
        spec = parse_spec(text)
    except Exception:  # noqa: BLE001 - the command ran, so it parsed; be safe anyway
        return None
    if spec.is_path:
        return spec.target
    module = sys.modules.get(spec.target)
    return getattr(module, "__file__", None)


def _object_file(obj: Any) -> str | None:
    import functools
    import inspect

    while isinstance(obj, functools.partial):
        obj = obj.func
    for candidate in (obj, type(obj)):
        try:
            return inspect.getsourcefile(candidate) or inspect.getfile(candidate)
        except (TypeError, OSError):
            continue
    return None


_OPTIONS = (
    ("primals", "--primals"),
    ("tangents", "--tangents"),
    ("cotangents", "--cotangents"),
)


def inputs(request: Any, argv: list[str] | None = None) -> list[dict[str, Any]]:
    """Every input the command read: files with their sha256, and what needs no file."""
    found = []
    for field, option in _OPTIONS:
        for value in getattr(request, field, ()) or ():
            found.append(_source(value, option))
    for field, option in (("state", "--state"), ("sparsity", "--sparsity")):
        value = getattr(request, field, None)
        if value:
            found.append({"option": option, "value": value, "kind": "file", **_file_entry(value)})
    config = _config(argv or [])
    if config is not None:
        found.append({"option": "--config", "value": config, "kind": "file", **_file_entry(config)})
    return found


def _source(value: Any, option: str) -> dict[str, Any]:
    """As :func:`jaccli.io.inputs.read_source` tells them apart, in its order."""
    from jaccli.io import inputs as reading

    if not isinstance(value, str):
        return {"option": option, "value": None, "kind": "array", **_array_entry(value)}
    entry: dict[str, Any] = {"option": option, "value": value}
    if value == "-":
        entry.update(kind="stdin", sha256=reading.stdin_sha256())
    elif os.path.isfile(value) or (os.path.exists(value) and not os.path.isdir(value)):
        entry.update(kind="file", **_file_entry(value))
    elif reading._GENERATOR.match(value.strip()):
        entry.update(kind="generator", seeded_by="--seed")
    else:
        entry.update(kind="literal")  # the value is the data
    return entry


def _array_entry(value: Any) -> dict[str, Any]:
    """An array or tensor given from Python: its shape, dtype and the sha256 of its bytes."""
    import numpy as np

    dtype = str(getattr(value, "dtype", "")).replace("torch.", "")
    try:
        if hasattr(value, "detach"):
            value = value.detach().cpu()
            if dtype == "bfloat16":
                value = value.float()
            value = value.numpy()
        data = np.ascontiguousarray(value)
    except Exception:  # noqa: BLE001
        return {"sha256": None, "why": "not readable as an array"}
    return {"shape": list(data.shape), "dtype": dtype or str(data.dtype), "sha256": _bytes_sha256(data)}


def _bytes_sha256(data: Any) -> str:
    digest = hashlib.sha256()
    if data.size:
        digest.update(memoryview(data).cast("B"))
    return digest.hexdigest()


def _config(argv: list[str]) -> str | None:
    """The YAML config a command line names: ``jac run CONFIG`` or ``--config FILE``."""
    if len(argv) > 2 and argv[1] == "run":
        return argv[2]
    for i, word in enumerate(argv):
        if word == "--config" and i + 1 < len(argv):
            return argv[i + 1]
        if word.startswith("--config="):
            return word.split("=", 1)[1]
    return None


_SKIPPED = ("stdin", "argv")


def python_fields(request: Any) -> dict[str, Any]:
    """The Request's fields that differ from their defaults, as plain data."""
    import dataclasses

    fields: dict[str, Any] = {}
    for f in dataclasses.fields(request):
        if f.name in _SKIPPED:
            continue
        value = getattr(request, f.name)
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = dataclasses.MISSING
        if default is not dataclasses.MISSING and _same(value, default):
            continue
        fields[f.name] = _plain(value)
    return fields


def _same(value: Any, default: Any) -> bool:
    try:
        return bool(value == default) and type(value) is type(default)
    except Exception:  # noqa: BLE001 - an array compared elementwise
        return False


def _plain(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if hasattr(value, "shape") and hasattr(value, "dtype"):
        return f"<array {list(value.shape)} {str(value.dtype).replace('torch.', '')}>"
    if callable(value):
        return f"<{_qualified(value)}>"
    return repr(value)


def _qualified(obj: Any) -> str:
    """``module:qualname`` of a function, or of an object's class (an nn.Module instance)."""
    named = obj if hasattr(obj, "__qualname__") else type(obj)
    return f"{getattr(named, '__module__', None) or '?'}:{named.__qualname__}"


def _python_line(request: Any, fields: dict[str, Any]) -> str | None:
    """From Python: the call that reruns it (``fields``: python_fields, consumed), when every
    field is plain data (no callable, no arrays); None otherwise (the record's python_api and
    inputs say what was given)."""
    plain = isinstance(request.func, str) and all(
        isinstance(v, str) for f in ("primals", "tangents", "cotangents") for v in getattr(request, f, ())
    )
    if not plain:
        return None
    command, func = fields.pop("command", request.command), fields.pop("func", request.func)
    args = ", ".join([repr(command), repr(func), *(f"{k}={v!r}" for k, v in fields.items())])
    code = f"from jaccli import Request, run; run(Request({args}))"
    return f"cd {shlex.quote(os.getcwd())} && python -c {shlex.quote(code)}"


# --- carrying it -----------------------------------------------------------------------------

CARRIERS = ("npz", "json", "yaml")  # formats with room for the record (not text, not .npy)


def for_output(request: Any, timings: Any, fmt: str | None = None, **facts: Any) -> dict[str, Any] | None:
    """The record for an output in ``fmt`` (None: a ``--timings`` file), or None where the
    format has no room for it. Made at the first write of a command, and whenever ``--timings``
    will want it, so that inputs are hashed before any output can overwrite one."""
    if fmt is not None and fmt not in CARRIERS and getattr(request, "timings_path", None) is None:
        return None
    doc = record(request, timings, **facts)
    return doc if fmt is None or fmt in CARRIERS else None


def read(path: str) -> dict[str, Any] | None:
    """The record a file of jac's holds (.npz, .json, .yaml), or None."""
    if path.lower().endswith(".npz"):
        import numpy as np

        with np.load(path, allow_pickle=False) as z:
            return json.loads(str(z[KEY][()])) if KEY in z.files else None
    with open(path, encoding="utf-8") as fh:
        text = fh.read()
    if path.lower().endswith(".json"):
        doc = json.loads(text)
    else:
        import yaml

        doc = yaml.safe_load(text)
    if not isinstance(doc, dict):
        return None
    return doc.get(KEY, doc.get("record"))
