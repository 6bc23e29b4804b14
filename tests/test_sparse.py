"""--sparse, --sparsity, jac sparsity, jac check --sparse (issue 13).

Every sparse result is compared, entry for entry in float64, with the dense Jacobian or Hessian
from torch.func called directly; detected patterns are checked to hold every nonzero of the true
Jacobian on random functions built from the supported op families.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import assert_clean_error, jac, write_module
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

sp = pytest.importorskip("scipy.sparse")

from jaccli import Request, run  # noqa: E402
from jaccli.sparse import colouring, compressed  # noqa: E402
from jaccli.sparse.detect import detect  # noqa: E402

# --- functions covering the op families ---------------------------------------------------------

GEN = torch.Generator().manual_seed(0)
MAT = torch.randn(6, 6, generator=GEN, dtype=torch.float64) * (torch.rand(6, 6, generator=GEN) < 0.4)
KERNEL = torch.tensor([[[0.0, 1.5, 0.0, -2.0]]], dtype=torch.float64)  # conv1d weight with zero taps
STENCIL = torch.tensor([[0.0, 1, 0], [1, -4, 1], [0, 1, 0]], dtype=torch.float64).reshape(1, 1, 3, 3)
IDX = torch.tensor([3, 0, 5, 5, 1])


def elementwise(x):  # broadcasting, unary and binary pointwise ops
    a = x.reshape(2, 3)
    return torch.sin(a) * a[:1] + torch.exp(a[:, 1:2]) / (2 + a**2) - torch.tanh(a).clamp(-0.5, 0.5)


def reductions(x):
    a = x.reshape(2, 3)
    return torch.cat([a.sum(0), a.prod(1), a.amax(1), a.norm(dim=0), a.var(1), torch.logsumexp(a, 0),
                      a.mean().reshape(1)])  # fmt: skip


def views(x):
    a = x.reshape(2, 3).t().permute(1, 0).unsqueeze(0).expand(2, 2, 3)
    return (a * torch.arange(1.0, 13, dtype=torch.float64).reshape(2, 2, 3)).transpose(0, 2).flatten() ** 2


def slicing(x):
    a = x.reshape(2, 3)
    return torch.cat([a[1, 1:] * a[0, :2], a[:, 0] ** 3, a[..., 2].flip(0), x.narrow(0, 1, 2).exp()])


def indexing(x):
    base = torch.zeros(6, dtype=torch.float64)
    scattered = base.scatter(0, torch.tensor([4, 2]), x[:2] ** 2)
    gathered = torch.gather(x.reshape(2, 3) ** 2, 1, torch.tensor([[2, 0], [1, 1]]))
    return torch.cat([x[IDX] * x[0], x.index_select(0, IDX[:2]).sin(), scattered, gathered.flatten()])


def shifting(x):  # cat, stack, roll, pad
    a = torch.nn.functional.pad(x, (2, 1)) ** 2
    b = torch.stack([x.roll(2), x.roll(-1)]).sum(0)
    return torch.cat(
        [
            a[1:-1] * b.repeat(2)[:7],
            b * x,
            torch.nn.functional.pad(x.reshape(2, 3), (1, 0), value=3.0).flatten(),
        ]
    )


def matmuls(x):
    a = x.reshape(2, 3)
    both = a @ a.t()  # both factors depend on x
    const = MAT @ torch.cat([x, x[:0]]).sin()  # a constant matrix with zeros
    batched = torch.bmm(a.unsqueeze(0), MAT[:3, :2].unsqueeze(0))
    return torch.cat([both.flatten(), const, batched.flatten(), torch.nn.functional.linear(x, MAT[:2])])


def convolutions(x):
    one = torch.nn.functional.conv1d(x.reshape(1, 1, 6), KERNEL, padding=2)
    grid = torch.cat([x, x.cos(), x**2]).reshape(1, 1, 3, 6)
    two = torch.nn.functional.conv2d(grid, STENCIL, padding=1)
    return torch.cat([one.flatten(), two.flatten() * 1.5])


def along(x):
    a = x.reshape(2, 3)
    return torch.cat([torch.softmax(a, 1).flatten(), x.cumsum(0) * x, torch.sort(x**2)[0]])


def mutating(x):
    y = x.clone()
    y[1:] += x[:-1] * 2
    y[0] = x[5] ** 2
    return y.exp()


def stencil(u):  # f(u) = Lap(u) + u^2 - u^3 on a periodic grid
    n = int(round(u.numel() ** 0.5))
    g = u.reshape(n, n)
    lap = g.roll(1, 0) + g.roll(-1, 0) + g.roll(1, 1) + g.roll(-1, 1) - 4 * g
    return (lap + g**2 - g**3).reshape(-1)


FAMILIES = [
    elementwise,
    reductions,
    views,
    slicing,
    indexing,
    shifting,
    matmuls,
    convolutions,
    along,
    mutating,
]


def _dense(fn, primals, argnums=(0,), mode="rev"):
    """The dense Jacobian (all outputs x all differentiated inputs), from torch.func directly
    (jacfwd or jacrev: the same mode as the sparse one, so that equal means bit for bit)."""

    def flat(*diff):
        args = list(primals)
        for a, t in zip(argnums, diff):
            args[a] = t
        out = fn(*args)
        leaves = out if isinstance(out, (tuple, list)) else (out,)
        return torch.cat([t.reshape(-1) for t in leaves])

    transform = torch.func.jacfwd if mode == "fwd" else torch.func.jacrev
    jac_ = transform(flat, argnums=tuple(range(len(argnums))))(*[primals[a] for a in argnums])
    m = sum(t.numel() for t in (flat(*[primals[a] for a in argnums]),))
    return torch.cat([j.reshape(m, -1) for j in jac_], 1).numpy()


def _sparse(command, fn, *primals, **options):
    outcome = run(
        Request(command, fn, primals=list(primals), dtype="float64", sparse=True, repeat=1, **options)
    )
    return outcome.sparse


@pytest.mark.parametrize("fn", FAMILIES, ids=lambda f: f.__name__)
def test_sparse_jacobian_equals_the_dense_one_exactly(fn):
    x = torch.randn(6, generator=GEN, dtype=torch.float64)
    for command in ("jacfwd", "jacrev"):
        dense = _dense(fn, [x], mode=command[3:])
        outcome = run(Request(command, fn, primals=[x], dtype="float64", sparse=True, repeat=1))
        result = outcome.sparse
        # the steady state ran the traced graph, which reproduced these values (jaccli.sparse.kernel)
        assert "traced to one aten graph" in outcome.timings.footer["engine"], outcome.timings.notes
        assert result.matrix.shape == dense.shape
        np.testing.assert_array_equal(result.matrix.toarray(), dense)
    pattern = detect(fn, [x], (0,)).matrix.toarray()
    assert not np.any((dense != 0) & ~pattern), "the detected pattern misses a nonzero"


def test_jacobian_mode_auto_picks_fewer_colours_and_says_so():
    def arrow(x):  # an arrowhead: a dense first row, column and the diagonal
        return torch.cat([x.sum().reshape(1) * x[0], x[1:] * x[0] + x[1:] ** 2])

    x = torch.randn(8, generator=GEN, dtype=torch.float64)
    result = _sparse("jacobian", arrow, x)
    np.testing.assert_array_equal(result.matrix.toarray(), _dense(arrow, [x], mode=result.mode[:3]))
    p = detect(arrow, [x], (0,)).matrix
    fwd = colouring.column_colouring(p).max() + 1
    rev = colouring.row_colouring(p).max() + 1
    assert result.colours == min(fwd, rev)
    assert result.mode == ("reverse" if rev < fwd else "forward")
    assert any("--mode auto --sparse" in note for note in result.notes)


def test_several_arguments_and_outputs_are_blocks_of_one_matrix(workdir):
    write_module(
        workdir,
        "multi",
        """
        import torch
        def f(x, y):
            return torch.cat([x * y[:3], (y.roll(1) - y) ** 2]), x.sum() * y
        """,
    )
    import multi

    x = torch.randn(3, generator=GEN, dtype=torch.float64)
    y = torch.randn(4, generator=GEN, dtype=torch.float64)
    np.save("x.npy", x.numpy())
    np.save("y.npy", y.numpy())
    r = jac(
        "jacobian", "multi:f", "-p", "x.npy", "-p", "y.npy", "--argnums", "0,1", "--sparse", "-o", "J.npz"
    )
    assert r.code == 0, r
    whole = sp.load_npz("J.npz").toarray()
    dense = _dense(multi.f, [x, y], (0, 1), mode="fwd")
    np.testing.assert_array_equal(whole, dense)
    with np.load("J.npz", allow_pickle=False) as z:
        keys = list(z["keys"])
        ro, co = z["row_offsets"], z["column_offsets"]
        br, bc = z["block_rows"], z["block_columns"]
    assert keys == ["jacobian.0.0", "jacobian.0.1", "jacobian.1.0", "jacobian.1.1"]
    full = torch.func.jacfwd(multi.f, argnums=(0, 1))(x, y)
    for i, key in enumerate(keys):
        out, arg = int(key.split(".")[1]), int(key.split(".")[2])
        block = whole[ro[br[i]] : ro[br[i] + 1], co[bc[i]] : co[bc[i] + 1]]
        np.testing.assert_array_equal(block, full[out][arg].reshape(block.shape).numpy())
    # JSON: COO triplets per key
    r = jac(
        "jacrev", "multi:f", "-p", "x.npy", "-p", "y.npy", "--argnums", "0,1", "--sparse", "--format", "json"
    )
    assert r.code == 0, r
    doc = json.loads(r.stdout)
    item = doc["jacobian.0.1"]
    rebuilt = np.zeros(item["shape"])
    rebuilt[item["row"], item["col"]] = item["data"]
    rev = torch.func.jacrev(multi.f, argnums=(0, 1))(x, y)
    np.testing.assert_array_equal(rebuilt, rev[0][1].numpy())
    # --select keeps one block
    r = jac("jacfwd", "multi:f", "-p", "x.npy", "-p", "y.npy", "--argnums", "0,1", "--sparse", "--select",
            "jacobian.1.0", "-o", "B.npz")  # fmt: skip
    assert r.code == 0, r
    np.testing.assert_array_equal(sp.load_npz("B.npz").toarray(), full[1][0].numpy())


def test_batch_dim_gives_block_diagonal_per_sample_jacobians(workdir):
    write_module(workdir, "grid", "import torch\ndef f(u):\n    return u.roll(1) * u - u.roll(-1) ** 3\n")
    import grid

    x = torch.randn(3, 5, generator=GEN, dtype=torch.float64)
    np.save("x.npy", x.numpy())
    r = jac("jacobian", "grid:f", "-p", "x.npy", "--batch-dim", "0", "--sparse", "-o", "J.npz")
    assert r.code == 0, r
    whole = sp.load_npz("J.npz").toarray()
    assert whole.shape == (15, 15)
    for s in range(3):
        want = torch.func.jacfwd(grid.f)(x[s]).numpy()
        np.testing.assert_array_equal(whole[5 * s : 5 * s + 5, 5 * s : 5 * s + 5], want)
    off = whole.copy()
    for s in range(3):
        off[5 * s : 5 * s + 5, 5 * s : 5 * s + 5] = 0
    assert not off.any()


def test_sparse_hessian_equals_the_dense_one():
    def chain(x):  # a chain energy: a banded Hessian
        return ((x[1:] - x[:-1]) ** 2).sum() + (x**4).sum() + (x[2:] * x[:-2]).sum()

    def grid_energy(u):
        return (stencil(u) ** 2).sum()

    for fn, size in ((chain, 9), (grid_energy, 16)):
        x = torch.randn(size, generator=GEN, dtype=torch.float64)
        result = _sparse("hessian", fn, x)
        want = torch.func.hessian(fn)(x).numpy()
        np.testing.assert_array_equal(result.matrix.toarray(), want)
        assert result.mode == "symmetric"
        assert result.colours < size


def test_sparse_hessian_of_two_arguments():
    def f(x, y):
        return (x * y[:3]).sum() ** 2 + (y.roll(1) * y).sum() + (x**3).sum()

    x = torch.randn(3, generator=GEN, dtype=torch.float64)
    y = torch.randn(4, generator=GEN, dtype=torch.float64)
    result = _sparse("hessian", f, x, y, argnums=(0, 1))
    h = torch.func.hessian(f, argnums=(0, 1))(x, y)
    for key in ("hessian.0.0", "hessian.0.1", "hessian.1.0", "hessian.1.1"):
        i, j = int(key[-3]), int(key[-1])
        np.testing.assert_array_equal(result.block(key).toarray(), h[i][j].numpy())


# --- property tests: detected patterns hold every true nonzero ------------------------------------

N = 6


def _unary_ops():
    rng = torch.Generator().manual_seed(7)
    weights = torch.randn(N, N, generator=rng, dtype=torch.float64) * (torch.rand(N, N, generator=rng) < 0.3)
    perm = torch.randperm(N, generator=rng)
    dup = torch.tensor([0, 2, 2, 5, 1, 0])
    kernel = torch.tensor([[[1.0, 0.0, -1.0]]], dtype=torch.float64)
    return [
        lambda a: a.roll(1),
        lambda a: a.flip(0),
        lambda a: torch.sin(a),
        lambda a: a**2,
        lambda a: a.cumsum(0),
        lambda a: a - a.mean(),
        lambda a: a[perm],
        lambda a: torch.gather(a, 0, perm),
        lambda a: weights @ a,
        lambda a: a.reshape(2, 3).t().reshape(-1),
        lambda a: torch.cat([a[3:], a[:3]]),
        lambda a: torch.nn.functional.pad(a[1:-1], (1, 1)),
        lambda a: torch.nn.functional.conv1d(a.reshape(1, 1, N), kernel, padding=1).reshape(-1),
        lambda a: torch.softmax(a.reshape(2, 3), 1).reshape(-1),
        lambda a: torch.where(perm > 2, a, a.exp()),
        lambda a: a.reshape(2, 3).amax(1).repeat(3),
        lambda a: torch.zeros(N, dtype=a.dtype).index_add(0, perm, a),
        lambda a: torch.zeros(N, dtype=a.dtype).index_put((dup,), a, accumulate=True),  # repeated indices
        lambda a: a.scatter_add(0, dup, a.sin()),
    ]


UNARY = _unary_ops()


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    steps=st.lists(st.tuples(st.integers(0, len(UNARY) - 1), st.booleans()), min_size=1, max_size=5),
    seed=st.integers(0, 2**16),
)
def test_detected_pattern_holds_every_true_nonzero(steps, seed):
    def f(x):
        values = [x]
        for op, mix in steps:
            y = UNARY[op](values[-1])
            if mix:  # a binary op with an earlier value
                y = y * values[len(values) // 2]
            values.append(y)
        return values[-1]

    x = torch.randn(N, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    found = detect(f, [x], (0,), hessian=True)
    dense = _dense(f, [x])
    assert not np.any((dense != 0) & ~found.matrix.toarray())
    h = torch.func.hessian(lambda t: f(t).sum())(x).numpy()
    assert not np.any((h != 0) & ~found.hessian.toarray())
    # and the compressed products reproduce the dense Jacobian from that pattern
    colours = colouring.column_colouring(found.matrix)
    plan = compressed.plan("forward", found.matrix, colours)
    values = compressed.Compressed(f, [0], [N], [(N,)], plan).values([x]).numpy()
    got = sp.csr_matrix((values, plan.pattern.indices, plan.pattern.indptr), shape=plan.pattern.shape)
    np.testing.assert_allclose(got.toarray(), dense, rtol=1e-12, atol=1e-12)


@settings(max_examples=30, deadline=None)
@given(m=st.integers(1, 30), n=st.integers(1, 30), density=st.floats(0.0, 0.5), seed=st.integers(0, 2**16))
def test_colourings_allow_direct_recovery(m, n, density, seed):
    p = sp.random(m, n, density=density, format="csr", random_state=seed, dtype=float) != 0
    assert colouring.valid_columns(p, colouring.column_colouring(p))
    assert colouring.valid_columns(p.T.tocsr(), colouring.row_colouring(p))
    s = sp.random(n, n, density=density, format="csr", random_state=seed + 1, dtype=float) != 0
    s = sp.csr_matrix(s + s.T, dtype=bool)
    assert colouring.valid_symmetric(s, colouring.star_colouring(s))


def test_stencil_needs_no_more_colours_than_asdex():
    # asdex 0.5 colours the 64 x 64 periodic 5-point stencil with 9 colours (issue 13's table)
    found = detect(stencil, [torch.randn(4096, dtype=torch.float64)], (0,))
    assert found.matrix.nnz == 5 * 4096
    colours = colouring.column_colouring(found.matrix)
    assert colouring.valid_columns(found.matrix, colours)
    assert colours.max() + 1 <= 9


# --- jac sparsity, --sparsity, jac check --sparse, errors -----------------------------------------


@pytest.fixture
def stencil_module(workdir):
    write_module(
        workdir,
        "sten",
        """
        import torch
        def f(u):
            n = int(round(u.numel() ** 0.5))
            g = u.reshape(n, n)
            lap = g.roll(1, 0) + g.roll(-1, 0) + g.roll(1, 1) + g.roll(-1, 1) - 4 * g
            return (lap + g**2 - g**3).reshape(-1)
        def wrong(u):
            return u.roll(1) * u
        def branchy(x):
            if x.sum() > 0:
                return x * 2
            return x
        def loss(x):
            return (x ** 3).sum()
        """,
    )
    np.save("x.npy", np.random.default_rng(0).standard_normal(16))
    return workdir


def test_sparsity_command_writes_a_pattern_that_sparsity_reuses(stencil_module):
    r = jac("sparsity", "sten:f", "-p", "x.npy", "-o", "P.npz", "--format", "json", "--no-timings")
    assert r.code == 0, r
    summary = json.loads(r.stdout)
    assert summary["shape"] == [16, 16] and summary["nnz"] == 80 and summary["fallbacks"] == []
    pattern = sp.load_npz("P.npz")
    assert pattern.shape == (16, 16) and pattern.nnz == 80
    with np.load("P.npz", allow_pickle=False) as z:
        assert colouring.valid_columns(pattern, z["column_colours"])
    r = jac("jacobian", "sten:f", "-p", "x.npy", "--sparsity", "P.npz", "--dtype", "float64", "-o", "J.npz")
    assert r.code == 0, r
    import sten

    x = torch.from_numpy(np.load("x.npy"))
    np.testing.assert_array_equal(sp.load_npz("J.npz").toarray(), torch.func.jacfwd(sten.f)(x).numpy())


def test_check_sparse_catches_a_wrong_pattern(stencil_module):
    assert jac("sparsity", "sten:wrong", "-p", "x.npy", "-o", "W.npz", "-q").code == 0
    r = jac("check", "sten:f", "-p", "x.npy", "--sparsity", "W.npz", "--no-timings")
    assert r.code == 1, r
    assert "misses" in r.stdout and "FAIL" in r.stdout
    r = jac("check", "sten:f", "-p", "x.npy", "--sparse", "--no-timings", "--format", "json")
    assert r.code == 0, r
    doc = json.loads(r.stdout)
    assert doc["verdict"] == "PASS" and {c["verdict"] for c in doc["checks"]} == {"PASS"}


def test_bad_patterns_are_input_errors(stencil_module):
    (stencil_module / "junk.npz").write_text("not a zip")
    assert_clean_error(
        jac("jacobian", "sten:f", "-p", "x.npy", "--sparsity", "junk.npz"), 2, "--sparsity junk.npz"
    )
    assert_clean_error(jac("jacobian", "sten:f", "-p", "x.npy", "--sparsity", "none.npz"), 2, "no such file")
    sp.save_npz("small.npz", sp.identity(9, format="csr"))
    assert_clean_error(
        jac("jacfwd", "sten:f", "-p", "x.npy", "--sparsity", "small.npz", "-o", "J.npz"),
        2,
        "9 x 9",
        "16 x 16",
    )
    assert not (stencil_module / "J.npz").exists()
    assert jac("sparsity", "sten:loss", "-p", "x.npy", "--hessian", "-o", "H.npz", "-q").code == 0
    assert_clean_error(jac("jacobian", "sten:f", "-p", "x.npy", "--sparsity", "H.npz"), 2, "hessian pattern")
    # a plain scipy pattern of the right shape works
    sp.save_npz("id.npz", sp.identity(16, format="coo"))
    assert jac("jacrev", "sten:loss", "-p", "x.npy", "--sparsity", "id.npz", "-q").code == 2  # 1 x 16 needed


def test_data_dependent_control_flow_points_at_sparsity(stencil_module):
    assert_clean_error(jac("jacobian", "sten:branchy", "-p", "x.npy", "--sparse"), 2, "--sparsity")


def test_sparse_options_are_refused_where_they_do_not_apply(stencil_module):
    assert_clean_error(jac("jacobian", "sten:f", "-p", "x.npy", "--sparse", "-o", "J.npy"), 2, ".npz")
    assert_clean_error(jac("jacobian", "sten:f", "-p", "x.npy", "--sparse", "--has-aux"), 2, "--has-aux")


def test_text_output_shows_shape_stored_entries_and_colours(stencil_module):
    r = jac("jacfwd", "sten:f", "-p", "x.npy", "--sparse", "--no-timings")
    assert r.code == 0, r
    assert "jacobian: sparse 16 x 16" in r.stdout and "80 stored" in r.stdout
    assert "colours:" in r.stdout and "forward" in r.stdout


def test_missing_scipy_is_one_clear_line(stencil_module, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "scipy", None)
    monkeypatch.setitem(sys.modules, "scipy.sparse", None)
    assert_clean_error(jac("jacobian", "sten:f", "-p", "x.npy", "--sparse"), 2, "jaccli[sparse]")


def test_no_forward_formula_falls_back_to_row_colouring(workdir):
    write_module(
        workdir,
        "custom",
        """
        import torch
        class Square(torch.autograd.Function):  # no jvp: forward mode cannot run it
            @staticmethod
            def forward(x):
                return x * x
            @staticmethod
            def setup_context(ctx, inputs, output):
                ctx.save_for_backward(inputs[0])
            @staticmethod
            def backward(ctx, g):
                (x,) = ctx.saved_tensors
                return 2 * x * g
        def f(x):
            return Square.apply(x.roll(1)) + x
        """,
    )
    import custom

    x = torch.randn(5, generator=GEN, dtype=torch.float64)
    result = _sparse("jacobian", custom.f, x)
    assert result.mode == "reverse"
    np.testing.assert_array_equal(result.matrix.toarray(), torch.func.jacrev(custom.f)(x).numpy())


def test_hessian_pattern_round_trip(stencil_module):
    r = jac(
        "sparsity", "sten:loss", "-p", "x.npy", "--hessian", "-o", "H.npz", "--format", "json", "--no-timings"
    )
    assert r.code == 0, r
    assert json.loads(r.stdout)["nnz"] == 16  # (x**3).sum(): a diagonal Hessian
    r = jac(
        "hessian", "sten:loss", "-p", "x.npy", "--sparsity", "H.npz", "--dtype", "float64", "-o", "Hs.npz"
    )
    assert r.code == 0, r
    import sten

    x = torch.from_numpy(np.load("x.npy"))
    np.testing.assert_array_equal(sp.load_npz("Hs.npz").toarray(), torch.func.hessian(sten.loss)(x).numpy())


# --- the steady-state kernel (jaccli.sparse.kernel) -----------------------------------------------


def _engine(fn, x, mode):
    p = detect(fn, [x], (0,), hessian=mode == "symmetric")
    pattern = p.hessian if mode == "symmetric" else p.matrix
    colours = {
        "forward": colouring.column_colouring,
        "reverse": colouring.row_colouring,
        "symmetric": colouring.star_colouring,
    }[mode](pattern)
    plan = compressed.plan(mode, pattern, colours)
    return compressed.Compressed(fn, [0], [x.numel()], [tuple(x.shape)], plan)


def test_traced_kernel_reproduces_the_eager_values_of_hessians_and_batches():
    from jaccli.sparse import kernel

    x = torch.randn(9, generator=GEN, dtype=torch.float64)
    chain = lambda t: ((t[1:] - t[:-1]) ** 2).sum() + (t**4).sum() + (t[2:] * t[:-2]).sum()  # noqa: E731
    engine = _engine(chain, x, "symmetric")
    want = engine.values([x])
    run_kernel, why, label = kernel.trace(lambda t: engine.values([t]), [x], want)
    assert why is None and label.startswith("traced")
    np.testing.assert_array_equal(run_kernel().numpy(), want.numpy())
    np.testing.assert_array_equal(run_kernel().numpy(), want.numpy())  # and again
    # the gradient's seed ones_like(f(x)) does not depend on f(x)'s value: the forward pass is gone
    graph = kernel._graph(lambda t: engine.values([t]), [x], decompose=False, cap=1 << 20)
    assert not [n for n in graph.graph.nodes if n.target is torch.ops.aten.sum.default]
    batch = torch.randn(3, 16, generator=GEN, dtype=torch.float64)
    engine = _engine(stencil, batch[0], "reverse")
    values = lambda b: torch.func.vmap(lambda t: engine.values([t]))(b)  # noqa: E731
    want = values(batch)
    run_kernel, why, _ = kernel.trace(values, [batch], want)
    assert why is None
    np.testing.assert_array_equal(run_kernel().numpy(), want.numpy())


def test_kernel_passes_fold_constants_and_reuse_buffers_without_changing_values():
    from torch.fx.experimental.proxy_tensor import make_fx

    from jaccli.sparse import kernel

    x = torch.randn(16, generator=GEN, dtype=torch.float64)
    engine = _engine(stencil, x, "forward")
    want = engine.values([x])
    graph = make_fx(lambda t: [engine.values([t])])(x)
    ops = lambda g: [n.target for n in g.graph.nodes if n.op == "call_function"]  # noqa: E731
    before = len(ops(graph))
    assert kernel.fold_constants(graph, 1 << 20) > 0  # the seeds and the Laplacian of the seeds
    kernel.simplify(graph)
    kernel.fewer_views(graph)
    kernel.in_place(graph)
    after = ops(graph)
    assert len(after) < before / 2
    assert any(str(t).endswith("_.Tensor") or "_." in str(t) for t in after)  # an in-place op
    np.testing.assert_array_equal(graph(x)[0].numpy(), want.numpy())
    np.testing.assert_array_equal(graph(x)[0].numpy(), want.numpy())  # buffers are not reused across calls
    direct = kernel.direct(graph)  # the same graph as straight-line calls of the ops' C++ entry points
    np.testing.assert_array_equal(direct(x)[0].numpy(), want.numpy())
    np.testing.assert_array_equal(direct(x)[0].numpy(), want.numpy())
    # a zero cap folds nothing and changes nothing
    graph = make_fx(lambda t: [engine.values([t])])(x)
    assert kernel.fold_constants(graph, 0) == 0
    np.testing.assert_array_equal(graph(x)[0].numpy(), want.numpy())


def test_untraceable_steady_state_runs_eager_with_a_note(monkeypatch):
    from jaccli.sparse import kernel

    def refuse(*args, **kwargs):
        raise RuntimeError("no tracing here. More text")

    monkeypatch.setattr(kernel, "_graph", refuse)
    x = torch.randn(16, generator=GEN, dtype=torch.float64)
    outcome = run(Request("jacobian", stencil, primals=[x], sparse=True, repeat=2))
    assert any("ran eager" in n and "no tracing here" in n for n in outcome.timings.notes)
    np.testing.assert_array_equal(outcome.sparse.matrix.toarray(), _dense(stencil, [x], mode="fwd"))
    assert "traced" not in outcome.timings.footer["engine"]


def test_sparse_compile_gives_the_dense_jacobian():
    # one tiny case: compiling costs seconds. Where Inductor cannot run (no C++ compiler) the
    # note says so and the traced graph runs; the written values are the eager ones either way.
    x = torch.randn(16, generator=GEN, dtype=torch.float64)
    outcome = run(Request("jacfwd", stencil, primals=[x], sparse=True, compile=True, repeat=2))
    np.testing.assert_array_equal(outcome.sparse.matrix.toarray(), _dense(stencil, [x], mode="fwd"))
    engine = outcome.timings.footer["engine"]
    assert "compiled by TorchInductor" in engine or any(
        "could not be compiled" in n for n in outcome.timings.notes
    ), (engine, outcome.timings.notes)
    assert outcome.timings.get("compile") is not None


# --- streaming (a small --max-memory) and torchrun: colour blocks into -o J.npz -------------------


def _same_npz(a, b):
    """The same arrays; the reproducibility record (``__jac__``) is in both but names each run's
    own command line, so only its command is compared."""
    import json

    with np.load(a, allow_pickle=False) as x, np.load(b, allow_pickle=False) as y:
        assert sorted(x.files) == sorted(y.files)
        for name in y.files:
            if name == "__jac__":
                records = [json.loads(str(z[name][()])) for z in (x, y)]
                assert records[0]["command"] == records[1]["command"]
                assert records[0]["inputs"] == records[1]["inputs"]
                continue
            assert x[name].dtype == y[name].dtype, name
            np.testing.assert_array_equal(x[name], y[name], err_msg=name)


def test_a_small_max_memory_streams_colour_blocks_into_the_same_file(stencil_module):
    import os

    x = np.random.default_rng(1).standard_normal(64)
    np.save("x64.npy", x)
    for command in ("jacfwd", "jacrev"):
        r = jac(command, "sten:f", "-p", "x64.npy", "--sparse", "--dtype", "float64", "-o", "M.npz", "-q")
        assert r.code == 0, r
        r = jac(command, "sten:f", "-p", "x64.npy", "--sparse", "--dtype", "float64", "-o", "S.npz",
                "--max-memory", "8K")  # fmt: skip
        assert r.code == 0, r
        assert "streamed to S.npz in blocks of" in r.stderr, r.stderr
        _same_npz("S.npz", "M.npz")
        import sten

        transform = torch.func.jacfwd if command == "jacfwd" else torch.func.jacrev
        dense = transform(sten.f)(torch.from_numpy(x)).numpy()
        np.testing.assert_array_equal(sp.load_npz("S.npz").toarray(), dense)
    # a Hessian and several blocks stream too
    r = jac("hessian", "sten:loss", "-p", "x64.npy", "--sparse", "-o", "HM.npz", "-q")
    assert r.code == 0, r
    r = jac("hessian", "sten:loss", "-p", "x64.npy", "--sparse", "-o", "HS.npz", "--max-memory", "2K", "-q")
    assert r.code == 0, r
    _same_npz("HS.npz", "HM.npz")
    assert not [f for f in os.listdir(".") if f.endswith(".tmp")]  # no temporary file left


def test_streaming_failure_leaves_no_file(workdir, monkeypatch):
    import os

    from jaccli.errors import FunctionError
    from jaccli.sparse import streamed

    blocks = []
    original = streamed._block

    def second_block_breaks(*args, **kwargs):
        blocks.append(1)
        if len(blocks) == 2:
            raise FunctionError("jacrev: broke mid-way")
        return original(*args, **kwargs)

    monkeypatch.setattr(streamed, "_block", second_block_breaks)
    x = torch.randn(16, generator=GEN, dtype=torch.float64)
    request = Request("jacrev", stencil, primals=[x], sparse=True, out="J.npz", max_memory=200, chunk_size=1)
    with pytest.raises(FunctionError, match="broke mid-way"):
        run(request)
    assert len(blocks) == 2  # the first block was written into the values' file, then removed
    assert os.listdir(".") == []


def test_two_ranks_write_what_one_process_computes(stencil_module):
    import os
    import socket
    import subprocess
    import sys

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    np.save("x25.npy", np.random.default_rng(2).standard_normal(25))  # 5 x 5: colours split unevenly
    r = jac("jacfwd", "sten:f", "-p", "x25.npy", "--sparse", "--dtype", "float64", "-o", "one.npz", "-q")
    assert r.code == 0, r
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
        "--master-port", str(port), "-m", "jaccli", "jacfwd", "sten:f", "-p", "x25.npy", "--sparse",
        "--dtype", "float64", "-o", "two.npz",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    run_ = subprocess.run(command, env=env, capture_output=True, timeout=300, text=True)
    assert run_.returncode == 0, run_.stderr
    assert run_.stderr.count("wrote 1 result(s)") == 1, run_.stderr  # rank 0 alone
    assert "shared over 2 ranks" in run_.stderr, run_.stderr
    _same_npz("two.npz", "one.npz")
    assert not [f for f in os.listdir(".") if f.endswith(".tmp")]


def test_torchrun_needs_one_npz_file(stencil_module, monkeypatch):
    for name, value in (
        ("WORLD_SIZE", "2"),
        ("RANK", "0"),
        ("MASTER_ADDR", "127.0.0.1"),
        ("MASTER_PORT", "1"),
    ):
        monkeypatch.setenv(name, value)
    assert_clean_error(jac("jacfwd", "sten:f", "-p", "x.npy", "--sparse"), 2, "-o PATH.npz")
    assert_clean_error(jac("jacfwd", "sten:f", "-p", "x.npy", "--sparse", "-o", "J.json"), 2, "-o PATH.npz")
    assert_clean_error(
        jac("jacfwd", "sten:f", "-p", "x.npy", "--sparse", "-o", "J.npz", "--select", "jacobian"),
        2,
        "--select",
    )
    assert_clean_error(jac("sparsity", "sten:f", "-p", "x.npy", "-o", "P.npz"), 2, "without torchrun")


@pytest.mark.cuda
def test_sparse_on_cuda_traces_and_streams_like_the_cpu():
    x = torch.randn(64, generator=GEN, dtype=torch.float64)
    cpu = _sparse("jacfwd", stencil, x).matrix.toarray()
    outcome = run(
        Request("jacfwd", stencil, primals=[x], dtype="float64", sparse=True, repeat=2, device="cuda")
    )
    np.testing.assert_allclose(outcome.sparse.matrix.toarray(), cpu, rtol=1e-12, atol=1e-12)
    assert "traced to one aten graph" in outcome.timings.footer["engine"], outcome.timings.notes
