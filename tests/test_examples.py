"""Every config in configs/ runs through ``jac run`` and gives what torch, called directly, gives.

Each config runs from a fresh temporary directory (its relative paths resolve against the
config's folder, not the current one) with its output redirected there, so nothing is
written into the repository. The references load the example modules and inputs without jac.
"""

from __future__ import annotations

import importlib.util
import json
import math

import numpy as np
import pytest
import torch
import yaml
from conftest import EXAMPLES, ROOT, jac

CONFIGS = ROOT / "configs"


def _example(name: str):
    spec = importlib.util.spec_from_file_location(f"_example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _npy(name: str) -> torch.Tensor:
    return torch.from_numpy(np.load(EXAMPLES / name, allow_pickle=False))


def _yaml(name: str) -> torch.Tensor:
    doc = yaml.safe_load((EXAMPLES / name).read_text())
    if isinstance(doc, dict):
        return torch.tensor(doc["data"], dtype=getattr(torch, doc["dtype"]))
    return torch.tensor(doc, dtype=torch.float32)


def _randn(*shapes: tuple[int, ...]) -> list[torch.Tensor]:
    """jac's generators: numpy's default_rng(seed 0), drawn in order, as float32."""
    rng = np.random.default_rng(0)
    return [torch.from_numpy(rng.standard_normal(shape).astype(np.float32)) for shape in shapes]


def quickstart_jvp():
    x, v = _npy("x.npy"), _npy("v.npy")
    out, jv = torch.func.jvp(_example("quickstart").f, (x,), (v,))
    return {"output": out, "jvp": jv}


def quickstart_gradient():
    x = _yaml("x.yaml").double()  # the config asks for float64
    out, pullback = torch.func.vjp(_example("quickstart").loss, x)
    (grad,) = pullback(torch.ones_like(out))
    torch.testing.assert_close(grad, torch.sin(x) * torch.cos(x))  # and the closed form agrees
    return {"output": out, "vjp.0": grad}


def mlp_jacobian():
    return {"jacobian": torch.func.jacrev(_example("mlp").model())(_npy("mlp_x.npy"))}


def mlp_parameter_gradients():
    model, x = _example("mlp").model(), _npy("mlp_x.npy")
    params = {k: v.detach() for k, v in model.named_parameters()}
    out, pullback = torch.func.vjp(lambda p: torch.func.functional_call(model, p, (x,)), params)
    (grads,) = pullback(torch.ones_like(out))
    return {"output": out, **{f"vjp.{k}": g for k, g in grads.items()}}


def _rosenbrock_gradient(x: torch.Tensor, a: float = 1.0, b: float = 100.0) -> torch.Tensor:
    """The textbook formula, independent of autograd."""
    g = torch.zeros_like(x)
    g[:-1] += -2 * (a - x[:-1]) - 4 * b * x[:-1] * (x[1:] - x[:-1] ** 2)
    g[1:] += 2 * b * (x[1:] - x[:-1] ** 2)
    return g


def rosenbrock_gradient():
    x = _yaml("rosenbrock_x.yaml")
    grad = torch.func.jacrev(_example("rosenbrock").rosenbrock)(x)
    torch.testing.assert_close(grad, _rosenbrock_gradient(x))
    return {"jacobian": grad}


def rosenbrock_hessian():
    x = _yaml("rosenbrock_x.yaml")
    hessian = torch.func.hessian(_example("rosenbrock").rosenbrock)(x)
    torch.testing.assert_close(hessian, torch.func.jacrev(_rosenbrock_gradient)(x))
    return {"hessian": hessian}


def rk4_jacobian():
    rk4, y0 = _example("rk4"), _yaml("pendulum_y0.yaml")
    jacobian = torch.func.jacfwd(lambda y: rk4.step(y, dt=0.05, damping=0.25))(y0)
    # the damped flow shrinks phase-plane areas by exp(-damping * dt); RK4 keeps that to O(dt^5)
    assert abs(torch.linalg.det(jacobian).item() - math.exp(-0.25 * 0.05)) < 1e-6
    return {"jacobian": jacobian}


def attention_jvp():
    from torch.nn.attention import SDPBackend, sdpa_kernel

    x, v = _randn((4, 8), (4, 8))
    # torch's math kernel has the forward mode the fused one lacks: a reference the fallback must meet
    with sdpa_kernel(SDPBackend.MATH):
        out, jv = torch.func.jvp(_example("attention").block, (x.double(),), (v.double(),))
    return {"output": out, "jvp": jv}


def _xy() -> tuple[torch.Tensor, torch.Tensor]:
    with np.load(EXAMPLES / "xy.npz", allow_pickle=False) as z:
        return torch.from_numpy(z["x"]), torch.from_numpy(z["y"])


def two_inputs_vjp():
    (x, y), doc = _xy(), yaml.safe_load((EXAMPLES / "u.yaml").read_text())
    u = {k: torch.tensor(v["data"], dtype=torch.float64) for k, v in doc.items()}
    out, pullback = torch.func.vjp(lambda a, b: _example("two_inputs").f(a, b, scale=2.0), x, y)
    gx, gy = pullback(u)
    return {"output.product": out["product"], "output.energy": out["energy"], "vjp.0": gx, "vjp.1": gy}


def two_inputs_jacobians():
    x, y = _xy()
    f = _example("two_inputs").f
    jac_ = torch.func.jacrev(lambda a, b: f(a, b, scale=2.0), argnums=(0, 1))(x, y)
    return {f"jacobian.{out}.{i}": jac_[out][i] for out in ("product", "energy") for i in (0, 1)}


def stencil_jacobian():
    (x,) = _randn((12,))
    jacobian = torch.func.jacrev(_example("stencil").smooth)(x)
    ring = torch.eye(12) + torch.eye(12).roll(1, 0) + torch.eye(12).roll(-1, 0)
    assert torch.all(jacobian[ring == 0] == 0) and torch.all(jacobian[ring == 1] != 0)  # banded
    return {"jacobian": jacobian}


REFERENCES = {
    "quickstart-jvp": quickstart_jvp,
    "quickstart-gradient": quickstart_gradient,
    "mlp-jacobian": mlp_jacobian,
    "mlp-parameter-gradients": mlp_parameter_gradients,
    "rosenbrock-gradient": rosenbrock_gradient,
    "rosenbrock-hessian": rosenbrock_hessian,
    "rk4-jacobian": rk4_jacobian,
    "attention-jvp": attention_jvp,
    "two-inputs-vjp": two_inputs_vjp,
    "two-inputs-jacobians": two_inputs_jacobians,
    "stencil-jacobian": stencil_jacobian,
}
STDERR_NOTES = {"attention-jvp": "jvp fell back to"}


def test_every_config_is_checked_and_every_example_has_a_config():
    names = {path.stem for path in CONFIGS.glob("*.yaml")}
    assert names == set(REFERENCES) | {"buggy-check"}
    used = " ".join(path.read_text() for path in CONFIGS.glob("*.yaml"))
    for example in EXAMPLES.glob("*.py"):
        assert f"examples/{example.name}:" in used, f"no config runs {example.name}"


@pytest.mark.parametrize("name", sorted(REFERENCES))
def test_config_matches_torch(name, workdir):
    run = jac("run", str(CONFIGS / f"{name}.yaml"), "-o", "out.npz", "--repeat", "0", "--no-timings")
    assert run.code == 0, run
    assert STDERR_NOTES.get(name, "wrote") in run.stderr, run
    with np.load(workdir / "out.npz", allow_pickle=False) as z:
        got = {k: z[k] for k in z.files}
    expected = {k: v.detach().numpy() for k, v in REFERENCES[name]().items()}
    assert list(got) == [*expected, "__jac__"]  # the results, then their reproducibility record
    for key, want in expected.items():
        tol = 1e-5 if np.float32 in (got[key].dtype, want.dtype) else 1e-10
        np.testing.assert_allclose(got[key], want, rtol=tol, atol=tol, err_msg=f"{name}: {key}")
    assert sorted(p.name for p in workdir.iterdir()) == ["out.npz"]  # nothing else written


def test_buggy_check_config_finds_the_bug_torch_sees(workdir):
    run = jac("run", str(CONFIGS / "buggy-check.yaml"), "-o", "report.json", "--repeat", "0", "-q")
    assert run.code == 1, run
    report = json.loads((workdir / "report.json").read_text())
    rows = {row["check"]: row for row in report["checks"]}
    (x,) = _randn((5,))
    layer, x = _example("buggy").layer, x.double()
    # SoftClip has no vmap rule: a loop of jvps for forward mode, torch.autograd's loop for reverse
    forward = torch.stack([torch.func.jvp(layer, (x,), (e,))[1] for e in torch.eye(5, dtype=x.dtype)], 1)
    reverse = torch.autograd.functional.jacobian(layer, x)
    assert rows["forward vs reverse"]["verdict"] == "FAIL"
    assert rows["forward vs reverse"]["max_abs_error"] == pytest.approx(
        (forward - reverse).abs().max().item()
    )
    torch.testing.assert_close(forward, 2 * reverse)  # the planted bug: backward drops the factor 2
    assert rows["fd: forward J.v"]["verdict"] == "PASS"


def test_two_inputs_config_writes_its_out_beside_itself(tmp_path, monkeypatch):
    """A config's out: is relative to the config's folder, whatever the current directory."""
    import shutil

    for folder in ("configs", "examples"):
        shutil.copytree(ROOT / folder, tmp_path / folder)
    monkeypatch.chdir(tmp_path / "examples")
    run = jac("run", "../configs/two-inputs-jacobians.yaml", "--repeat", "0", "-q")
    assert run.code == 0, run
    with np.load(tmp_path / "configs" / "two_inputs_jacobians.npz", allow_pickle=False) as z:
        got = {k: z[k] for k in z.files}
    for key, want in two_inputs_jacobians().items():
        np.testing.assert_allclose(got[key], want.numpy(), rtol=1e-12)
