"""A corpus of custom layers as people write them, each in a wrong and a correct version.

Classic ``torch.autograd.Function`` subclasses (``forward(ctx, ...)``, no ``setup_context``),
new-style ones (``setup_context``, ``jvp``, ``vmap``) and ``nn.Module`` layers. Every wrong one
has one planted bug: a transposed weight gradient, a missing product-rule term, a graph-cutting
backward (right to first order only), a wrong ``jvp``, a wrong ``vmap`` rule, a gradient wrong
only for negative inputs, one wrong only for a batch of more than one row, a wrong parameter
gradient.

``CASES`` lists them for tests/test_check_corpus.py and benchmarks/check_corpus.py: the jac
target is ``tests/layers_corpus.py:<name>_<wrong|right>``, the primals are ``-p`` strings, and
``inputs()`` builds the same tensors (float64, seeded) for torch.autograd.gradcheck.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn
from torch.autograd import Function

W4 = torch.tensor(
    [[1.0, 2.0, 0.0, -1.0], [0.5, -1.0, 3.0, 0.0], [0.0, 0.7, -2.0, 1.5], [2.0, 0.0, 1.0, 0.3]],
    dtype=torch.float64,
)


def _w(like):
    return W4.to(like.dtype)


# ---- 1, 2: linear map, transposed weight in backward ---------------------------------------------


class LinearClassic(Function):
    wrong = False

    @staticmethod
    def forward(ctx, x):
        return x @ _w(x)

    @classmethod
    def backward(cls, ctx, g):
        w = _w(g)
        return g @ w if cls.wrong else g @ w.T


class LinearClassicWrong(LinearClassic):
    wrong = True


def linear_classic_right(x):
    return LinearClassic.apply(x)


def linear_classic_wrong(x):
    return LinearClassicWrong.apply(x)


class LinearNew(Function):
    wrong = False
    generate_vmap_rule = True

    @staticmethod
    def forward(x):
        return x @ _w(x)

    @staticmethod
    def setup_context(ctx, inputs, output):
        pass

    @classmethod
    def backward(cls, ctx, g):
        w = _w(g)
        return g @ w if cls.wrong else g @ w.T

    @staticmethod
    def jvp(ctx, t):
        return t @ _w(t)


class LinearNewWrong(LinearNew):
    wrong = True


def linear_new_right(x):
    return LinearNew.apply(x)


def linear_new_wrong(x):
    return LinearNewWrong.apply(x)


# ---- 3, 4: x * sin(x), product rule term missing -------------------------------------------------


class ProductClassic(Function):
    wrong = False

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x * torch.sin(x)

    @classmethod
    def backward(cls, ctx, g):
        (x,) = ctx.saved_tensors
        return g * x * torch.cos(x) if cls.wrong else g * (torch.sin(x) + x * torch.cos(x))


class ProductClassicWrong(ProductClassic):
    wrong = True


def product_classic_right(x):
    return ProductClassic.apply(x)


def product_classic_wrong(x):
    return ProductClassicWrong.apply(x)


class ProductNew(Function):
    wrong = False
    generate_vmap_rule = True

    @staticmethod
    def forward(x):
        return x * torch.sin(x)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(inputs[0])
        ctx.save_for_forward(inputs[0])

    @classmethod
    def backward(cls, ctx, g):
        (x,) = ctx.saved_tensors
        return g * x * torch.cos(x) if cls.wrong else g * (torch.sin(x) + x * torch.cos(x))

    @staticmethod
    def jvp(ctx, t):
        (x,) = ctx.saved_tensors
        return t * (torch.sin(x) + x * torch.cos(x))


class ProductNewWrong(ProductNew):
    wrong = True


def product_new_right(x):
    return ProductNew.apply(x)


def product_new_wrong(x):
    return ProductNewWrong.apply(x)


# ---- 5, 6: x ** 3, backward right to first order but cutting the graph ---------------------------


class CubeClassic(Function):
    wrong = False

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x**3

    @classmethod
    def backward(cls, ctx, g):
        (x,) = ctx.saved_tensors
        return g * 3 * x.detach() ** 2 if cls.wrong else g * 3 * x**2


class CubeClassicWrong(CubeClassic):
    wrong = True


def cube_classic_right(x):
    return CubeClassic.apply(x).sum()


def cube_classic_wrong(x):
    return CubeClassicWrong.apply(x).sum()


class CubeNew(Function):
    wrong = False
    generate_vmap_rule = True

    @staticmethod
    def forward(x):
        return x**3

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(inputs[0])
        ctx.save_for_forward(inputs[0])

    @classmethod
    def backward(cls, ctx, g):
        (x,) = ctx.saved_tensors
        return g * 3 * x.detach() ** 2 if cls.wrong else g * 3 * x**2

    @staticmethod
    def jvp(ctx, t):
        (x,) = ctx.saved_tensors
        return t * 3 * x**2


class CubeNewWrong(CubeNew):
    wrong = True


def cube_new_right(x):
    return CubeNew.apply(x) * torch.tensor([1.0, -2.0, 0.5], dtype=x.dtype)  # non-scalar output


def cube_new_wrong(x):
    return CubeNewWrong.apply(x) * torch.tensor([1.0, -2.0, 0.5], dtype=x.dtype)


# ---- 7: exp with a wrong jvp (backward right) ----------------------------------------------------


class ExpNew(Function):
    wrong = False
    generate_vmap_rule = True

    @staticmethod
    def forward(x):
        return torch.exp(x)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(output)
        ctx.save_for_forward(output)

    @staticmethod
    def backward(ctx, g):
        (y,) = ctx.saved_tensors
        return g * y

    @classmethod
    def jvp(cls, ctx, t):
        (y,) = ctx.saved_tensors
        return t if cls.wrong else t * y


class ExpNewWrong(ExpNew):
    wrong = True


def exp_jvp_right(x):
    return ExpNew.apply(x)


def exp_jvp_wrong(x):
    return ExpNewWrong.apply(x)


# ---- 8: a scaling layer with its own vmap rule, wrong in the wrong version -----------------------


class TwiceVmap(Function):
    wrong = False

    @staticmethod
    def forward(x):
        return 2 * x

    @staticmethod
    def setup_context(ctx, inputs, output):
        pass

    @staticmethod
    def backward(ctx, g):
        return 2 * g

    @staticmethod
    def jvp(ctx, t):
        return 2 * t

    @classmethod
    def vmap(cls, info, in_dims, x):
        dim = in_dims[0]
        if dim is None:
            return 2 * x, None
        return (2 * x.flip(dim) if cls.wrong else 2 * x), dim  # wrong: the samples swap places


class TwiceVmapWrong(TwiceVmap):
    wrong = True


def vmap_rule_right(x):
    return TwiceVmap.apply(x).sin()


def vmap_rule_wrong(x):
    return TwiceVmapWrong.apply(x).sin()


# ---- 9: x * |x|, gradient 2|x| (the wrong one returns 2x: right for x > 0 only) -----------------


class SignedSquare(Function):
    wrong = False

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x * x.abs()

    @classmethod
    def backward(cls, ctx, g):
        (x,) = ctx.saved_tensors
        return g * 2 * x if cls.wrong else g * 2 * x.abs()


class SignedSquareWrong(SignedSquare):
    wrong = True


def negative_right(x):
    return SignedSquare.apply(x)


def negative_wrong(x):
    return SignedSquareWrong.apply(x)


# ---- 10: centring over the batch (rows): the wrong backward is right for one row only ------------


class CentreBatch(Function):
    wrong = False

    @staticmethod
    def forward(ctx, x):
        return x - x.mean(0, keepdim=True)

    @classmethod
    def backward(cls, ctx, g):
        return g - (g.sum(0, keepdim=True) if cls.wrong else g.mean(0, keepdim=True))


class CentreBatchWrong(CentreBatch):
    wrong = True


def batch_right(x):
    return torch.tanh(CentreBatch.apply(x))


def batch_wrong(x):
    return torch.tanh(CentreBatchWrong.apply(x))


# ---- 11: RMS normalisation as an nn.Module over a classic Function missing the rms term -----------


class RmsFunction(Function):
    wrong = False

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x / x.pow(2).mean(-1, keepdim=True).sqrt()

    @classmethod
    def backward(cls, ctx, g):
        (x,) = ctx.saved_tensors
        rms = x.pow(2).mean(-1, keepdim=True).sqrt()  # recomputed: differentiable (second order)
        if cls.wrong:
            return g / rms
        n = x.shape[-1]
        return g / rms - x * (g * x).sum(-1, keepdim=True) / (n * rms**3)


class RmsFunctionWrong(RmsFunction):
    wrong = True


class RmsNorm(nn.Module):
    def __init__(self, wrong: bool = False):
        super().__init__()
        self.function = RmsFunctionWrong if wrong else RmsFunction

    def forward(self, x):
        return self.function.apply(x)


def rms_right():
    return RmsNorm(False)


def rms_wrong():
    return RmsNorm(True)


# ---- 12: nn.Module linear layer with a custom Function; wrong weight gradient (--wrt params) -----


class LinearWeight(Function):
    wrong = False

    @staticmethod
    def forward(ctx, x, weight):
        ctx.save_for_backward(x, weight)
        return x @ weight.T

    @classmethod
    def backward(cls, ctx, g):
        x, weight = ctx.saved_tensors
        grad_w = (x.T @ g) if cls.wrong else (g.T @ x)  # wrong: transposed (square weight)
        return g @ weight, grad_w


class LinearWeightWrong(LinearWeight):
    wrong = True


class CustomLinear(nn.Module):
    def __init__(self, wrong: bool = False):
        super().__init__()
        generator = torch.Generator().manual_seed(3)
        self.weight = nn.Parameter(torch.randn(4, 4, generator=generator))
        self.function = LinearWeightWrong if wrong else LinearWeight

    def forward(self, x):
        return torch.tanh(self.function.apply(x, self.weight))


def param_linear_right():
    return CustomLinear(False)


def param_linear_wrong():
    return CustomLinear(True)


# ---- 13: nn.Module with a learnable scale, new-style Function, wrong sign of the scale gradient ---


class Scale(Function):
    wrong = False
    generate_vmap_rule = True

    @staticmethod
    def forward(x, scale):
        return x * scale

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(*inputs)
        ctx.save_for_forward(*inputs)

    @classmethod
    def backward(cls, ctx, g):
        x, scale = ctx.saved_tensors
        grad_scale = g * x
        return g * scale, (-grad_scale if cls.wrong else grad_scale)

    @staticmethod
    def jvp(ctx, tx, tscale):
        x, scale = ctx.saved_tensors
        return tx * scale + x * tscale


class ScaleWrong(Scale):
    wrong = True


class ScaleLayer(nn.Module):
    def __init__(self, wrong: bool = False):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor([0.5, -1.5, 2.0, 1.0]))
        self.function = ScaleWrong if wrong else Scale

    def forward(self, x):
        return self.function.apply(x, self.scale).sin()


def param_scale_right():
    return ScaleLayer(False)


def param_scale_wrong():
    return ScaleLayer(True)


# ---- 14: softplus written by hand in an nn.Module, classic Function, wrong sign in backward ------


class SoftplusFunction(Function):
    wrong = False

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return torch.nn.functional.softplus(x)

    @classmethod
    def backward(cls, ctx, g):
        (x,) = ctx.saved_tensors
        return g * torch.sigmoid(-x if cls.wrong else x)


class SoftplusFunctionWrong(SoftplusFunction):
    wrong = True


class Softplus(nn.Module):
    def __init__(self, wrong: bool = False):
        super().__init__()
        self.function = SoftplusFunctionWrong if wrong else SoftplusFunction

    def forward(self, x):
        return self.function.apply(x)


def softplus_right():
    return Softplus(False)


def softplus_wrong():
    return Softplus(True)


# ---- the table -----------------------------------------------------------------------------------


@dataclass
class Case:
    name: str  # layer name: functions <name>_right and <name>_wrong (or factories, when module)
    style: str  # classic, new, module
    bug: str  # what the wrong version gets wrong
    shape: tuple  # of the one input
    fails: tuple  # jac rows that must FAIL for the wrong version (at least these)
    module: bool = False  # the names are factories of nn.Modules: "name()"
    params: bool = False  # check --wrt params
    order: int = 1
    extra: tuple = field(default_factory=tuple)

    def target(self, version: str) -> str:
        return f"{__file__}:{self.name}_{version}" + ("()" if self.module else "")

    def args(self, version: str) -> list[str]:
        spec = "randn:" + ",".join(str(n) for n in self.shape)
        args = ["check", self.target(version), "-p", spec, "--seed", "0", "--format", "json", "--no-timings"]
        if self.params:
            args += ["--wrt", "params"]
        if self.order != 1:
            args += ["--order", str(self.order)]
        return args + list(self.extra)

    def callable(self, version: str):
        made = globals()[f"{self.name}_{version}"]
        return made() if self.module else made


def inputs(case: Case) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    return torch.randn(*case.shape, generator=generator, dtype=torch.float64)


FD_REV = "fd: reverse J.v"
FWD_REV = "forward vs reverse"
FD_FWD = "fd: forward J.v"
SECOND = "order 2: fd of gradient, rev-over-rev"
VMAP_F = "batched: vmap f vs loop"

CASES = [
    Case("linear_classic", "classic", "transposed weight in backward", (3, 4), (FD_REV,)),
    Case("linear_new", "new", "transposed weight in backward", (3, 4), (FWD_REV, FD_REV)),
    Case("product_classic", "classic", "missing product-rule term", (5,), (FD_REV,)),
    Case("product_new", "new", "missing product-rule term", (5,), (FWD_REV, FD_REV)),
    Case("cube_classic", "classic", "graph-cutting backward (2nd order)", (3,), (SECOND,), order=2),
    Case("cube_new", "new", "graph-cutting backward (2nd order)", (3,), (SECOND,), order=2),
    Case("exp_jvp", "new", "wrong jvp (backward right)", (4,), (FWD_REV, FD_FWD)),
    Case("vmap_rule", "new", "wrong vmap rule", (4,), (VMAP_F,)),
    Case("negative", "classic", "wrong for negative inputs only", (6,), (FD_REV,)),
    Case("batch", "classic", "wrong for batch > 1 only", (4, 3), (FD_REV,)),
    Case("rms", "module", "missing term (nn.Module)", (2, 5), (FD_REV,), module=True),
    Case("softplus", "module", "sign error (nn.Module)", (6,), (FD_REV,), module=True),
    Case(
        "param_linear",
        "module",
        "transposed weight gradient (--wrt params)",
        (3, 4),
        (FD_REV,),
        module=True,
        params=True,
    ),
    Case(
        "param_scale",
        "module",
        "wrong sign of parameter gradient (--wrt params)",
        (4,),
        (FD_REV,),
        module=True,
        params=True,
    ),
]


def gradchecks(case: Case, version: str) -> dict[str, bool]:
    """torch.autograd.gradcheck's and gradgradcheck's verdicts (True: pass) on the same function."""
    from torch.autograd import gradcheck, gradgradcheck
    from torch.func import functional_call

    x = inputs(case)
    fn = case.callable(version)
    if case.params:
        fn.double()
        names = [n for n, _ in fn.named_parameters()]
        values = tuple(p.detach().clone().requires_grad_(True) for _, p in fn.named_parameters())

        def call(*ps):
            return functional_call(fn, dict(zip(names, ps)), (x,))

        args = values
    else:
        if isinstance(fn, nn.Module):
            fn.double()
        call = fn
        args = (x.clone().requires_grad_(True),)
    verdicts = {}
    for name, checker in (("gradcheck", gradcheck), ("gradgradcheck", gradgradcheck)):
        try:
            verdicts[name] = bool(checker(call, args, raise_exception=False))
        except Exception:  # noqa: BLE001 - gradgradcheck on a once-differentiable backward, say
            verdicts[name] = False
    return verdicts
