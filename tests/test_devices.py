"""Device choice. Without a GPU, the CUDA branches run against a faked torch.cuda; the real
CUDA runs are marked ``cuda`` and skip where there is none."""

import numpy as np
import pytest
import torch
from conftest import EXAMPLES, jac

from jaccli.autodiff.devices import resolve_device, synchronizer
from jaccli.errors import InputError


@pytest.fixture
def two_gpus(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)


@pytest.fixture
def no_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


def test_cpu_and_auto_without_cuda(no_gpu):
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto") == torch.device("cpu")


@pytest.mark.parametrize("name", ["cuda", "cuda:0", "cuda:1"])
def test_missing_cuda_names_the_available_devices(no_gpu, name):
    with pytest.raises(InputError, match=rf"--device {name}: CUDA is not available .*available: cpu"):
        resolve_device(name)


@pytest.mark.parametrize(
    ("name", "expected"),
    [("cuda", "cuda:0"), ("cuda:1", "cuda:1"), ("auto", "cuda:0"), ("cpu", "cpu")],
)
def test_cuda_names_resolve_when_present(two_gpus, name, expected):
    assert resolve_device(name) == torch.device(expected)


def test_cuda_index_out_of_range_lists_gpus(two_gpus):
    with pytest.raises(InputError, match=r"--device cuda:2: no such GPU; available: cpu, cuda:0, cuda:1"):
        resolve_device("cuda:2")


def test_cuda_timings_synchronise(monkeypatch):
    calls = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: calls.append(device))
    sync = synchronizer(torch.device("cuda", 1))
    sync()
    assert calls == [torch.device("cuda", 1)]
    synchronizer(torch.device("cpu"))()  # a no-op: must not call CUDA
    assert len(calls) == 1


def test_device_flag_syntax_is_checked_without_torch():
    run = jac("jvp", f"{EXAMPLES}/quickstart.py:f", "-p", "1.0", "--device", "gpu0")
    assert run.code == 2
    assert "use cpu, cuda, cuda:N or auto" in run.stderr


@pytest.mark.cuda
@pytest.mark.parametrize("command", ["jvp", "vjp", "jacfwd", "jacrev"])
def test_cuda_matches_cpu(command):
    args = [command, f"{EXAMPLES}/quickstart.py:f", "-p", f"{EXAMPLES}/x.npy", "--dtype", "float64"]
    args += {"jvp": ["-t", f"{EXAMPLES}/v.npy"], "vjp": ["-u", "randn"]}.get(command, [])
    cpu = jac(*args, "--format", "npz", "--no-timings")
    gpu = jac(*args, "--device", "cuda", "--format", "npz")
    assert cpu.code == 0 and gpu.code == 0, (cpu, gpu)
    assert "device cuda:0" in gpu.stderr
    for key, value in cpu.npz().items():
        np.testing.assert_allclose(gpu.npz()[key], value, rtol=1e-12, atol=1e-12)


def test_module_follows_dtype_flag():
    import importlib.util

    spec = importlib.util.spec_from_file_location("mlp_example", EXAMPLES / "mlp.py")
    mlp = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mlp)
    x = np.load(EXAMPLES / "mlp_x.npy")
    expected = torch.func.jacrev(mlp.model().double())(torch.from_numpy(x).double())
    run = jac(
        "jacrev",
        f"{EXAMPLES}/mlp.py:model()",
        "-p",
        f"{EXAMPLES}/mlp_x.npy",
        "--dtype",
        "float64",
        "--format",
        "npz",
    )
    assert run.code == 0, run
    got = run.npz()["jacobian"]
    assert got.dtype == np.float64
    np.testing.assert_allclose(got, expected.detach().numpy(), rtol=1e-13, atol=1e-15)
