"""jaccli: derivatives of a Python function with torch.func, from the shell or from Python.

The package imports nothing heavy at start-up, so ``jac --help`` stays fast; the library
names below are loaded on first use::

    >>> from jaccli import Request, run
    >>> outcome = run(Request("jvp", "examples/quickstart.py:f",
    ...                       primals=["examples/x.npy"], tangents=["examples/v.npy"]))
    >>> outcome.results["jvp"]
"""

__version__ = "0.1.0"

_LAZY = {
    "Request": "jaccli.pipeline",
    "Outcome": "jaccli.pipeline",
    "run": "jaccli.pipeline",
    "run_check": "jaccli.pipeline",
    "load_function": "jaccli.io.loading",
    "read_source": "jaccli.io.inputs",
    "compute": "jaccli.autodiff.transforms",
    "JacError": "jaccli.errors",
    "InputError": "jaccli.errors",
    "FunctionError": "jaccli.errors",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'jaccli' has no attribute {name!r}")
