"""``jac info``: what jac runs on, for bug reports and for scripts choosing a device.

Its first keys are :func:`jaccli.report.record.environment`, as every result file's record holds them.
"""

from __future__ import annotations

from typing import IO, Any


def gather() -> dict[str, Any]:
    import click
    import rich  # noqa: F401 - its version comes from metadata
    import torch
    import yaml

    from jaccli.autodiff.devices import available_devices

    devices = []
    for name in available_devices():
        entry: dict[str, Any] = {"device": name}
        if name.startswith("cuda"):
            props = torch.cuda.get_device_properties(int(name.split(":")[1]))
            entry.update(
                name=props.name,
                memory_gib=round(props.total_memory / 2**30, 1),
                capability=f"{props.major}.{props.minor}",
            )
        devices.append(entry)
    from jaccli.report.record import environment

    return {
        **environment(),  # what every result file's record says (jaccli.report.record)
        "click": _version("click", click),
        "rich": _version("rich", None),
        "pyyaml": yaml.__version__,
        "cuda_available": torch.cuda.is_available(),
        "devices": devices,
    }


def _version(name: str, module: Any) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return getattr(module, "__version__", "unknown")


def render(stream: IO[str], facts: dict[str, Any]) -> None:
    width = max(len(k) for k in facts)
    for key, value in facts.items():
        if key == "devices":
            continue
        stream.write(f"{key:<{width}}  {value}\n")
    stream.write("devices\n")
    for entry in facts["devices"]:
        extra = ", ".join(f"{k} {v}" for k, v in entry.items() if k != "device")
        stream.write(f"  {entry['device']}" + (f"  ({extra})" if extra else "") + "\n")
