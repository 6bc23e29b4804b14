"""Compressed products and decompression: a sparse Jacobian from one product per colour.

Column colouring (forward mode): seed matrix S (colours x inputs) with S[c, j] = 1 where column
j has colour c; B = J Sᵀ by ``vmap`` of ``jvp``; J[i, j] = B[i, colour(j)].
Row colouring (reverse mode): U (colours x outputs); B = U J by ``vmap`` of the ``vjp``
function; J[i, j] = B[colour(i), j].
Star colouring (Hessians): B = H Sᵀ by ``vmap`` of forward-over-reverse Hessian-vector products;
H[i, j] = B[i, colour(j)] where column j is the only one of its colour in row i, else
H[j, i] = B[j, colour(i)] (symmetry).

The gather indices into B are computed once, so each run is the products and one ``take``;
the values come out in the CSR order of the pattern, which is also the result's structure.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

FORWARD, REVERSE, SYMMETRIC = "forward", "reverse", "symmetric"


@dataclass
class Plan:
    mode: str  # forward, reverse, symmetric
    colours: Any  # numpy int64: per column (forward, symmetric) or row (reverse)
    pattern: Any  # csr bool (rows x columns) of the result
    take: Any  # torch int64: per stored entry, its flat index into the compressed products

    @property
    def count(self) -> int:
        return int(self.colours.max()) + 1 if len(self.colours) else 0


def plan(mode: str, pattern: Any, colours: Any) -> Plan:
    """The gather indices of ``mode`` for ``pattern`` coloured by ``colours``."""
    import numpy as np
    import scipy.sparse as sp
    import torch

    p = sp.csr_matrix(pattern, dtype=bool)
    p.sort_indices()
    colours = np.asarray(colours, np.int64)
    rows = np.repeat(np.arange(p.shape[0], dtype=np.int64), np.diff(p.indptr))
    cols = p.indices.astype(np.int64)
    m, n = p.shape
    if mode == FORWARD:  # B is (colours, m): B[c, i]
        take = colours[cols] * m + rows
    elif mode == REVERSE:  # B is (colours, n): B[c, j]
        take = colours[rows] * n + cols
    else:  # B is (colours, n): B[c, i] = sum over j of colour c of H[i, j]
        from jaccli.sparse.colouring import symmetric_sources

        direct, _ = symmetric_sources(p, colours, rows, cols)
        take = np.where(direct, colours[cols] * n + rows, colours[rows] * n + cols)
    return Plan(mode, colours, p, torch.from_numpy(np.ascontiguousarray(take)))


def seeds(colours: Any, size: int, chunk: Sequence[int], dtype: Any, device: Any) -> Any:
    """One-hot rows (len(chunk) x size): row r is 1 where the colour is chunk[r]."""
    import torch

    c = torch.as_tensor(colours, device=device)
    wanted = torch.as_tensor(list(chunk), device=device)
    return (c.unsqueeze(0) == wanted.unsqueeze(1)).to(dtype)


class Compressed:
    """The values of a sparse Jacobian or Hessian (CSR order) for given primals."""

    def __init__(
        self,
        fn: Callable[..., Any],
        argnums: Sequence[int],
        sizes: Sequence[int],
        shapes: Sequence[tuple],
        plan: Plan,
        chunk: int | None = None,
    ):
        self.fn = fn
        self.argnums = list(argnums)
        self.sizes = list(sizes)
        self.shapes = [tuple(s) for s in shapes]
        self.plan = plan
        self.chunk = chunk
        self.vmapped = True
        self._seeds: dict = {}

    def _split(self, flat: Any) -> list:
        """A (k, n) block of flat input directions as per-argument (k, *shape) tensors."""
        parts = flat.split(self.sizes, dim=1)
        return [p.reshape((flat.shape[0],) + s) for p, s in zip(parts, self.shapes)]

    def _flat_fn(self, primals: Sequence[Any]) -> Callable[..., Any]:
        import torch

        from jaccli import trees

        def flat(*diff: Any) -> Any:
            args = list(primals)
            for a, t in zip(self.argnums, diff):
                args[a] = t
            leaves = [leaf for _, leaf in trees.leaves(self.fn(*args))]
            leaves = [
                x for x in leaves if isinstance(x, torch.Tensor) and (x.is_floating_point() or x.is_complex())
            ]
            if len(leaves) == 1:
                return leaves[0].reshape(-1)
            return torch.cat([x.reshape(-1) for x in leaves]) if leaves else torch.zeros(0)

        return flat

    def _chunks(self) -> list[list[int]]:
        k = self.plan.count
        size = self.chunk or k or 1
        return [list(range(s, min(k, s + size))) for s in range(0, k, size)]

    def values(self, primals: Sequence[Any]) -> Any:
        """The stored entries, in the pattern's CSR order."""
        import torch

        if self.plan.pattern.nnz == 0 or self.plan.count == 0:
            dtype = primals[self.argnums[0]].dtype
            return torch.zeros(self.plan.pattern.nnz, dtype=dtype, device=primals[self.argnums[0]].device)
        blocks = [self._products(primals, chunk) for chunk in self._chunks()]
        products = blocks[0] if len(blocks) == 1 else torch.cat(blocks, 0)
        return torch.index_select(products.reshape(-1), 0, self.plan.take.to(products.device))

    def _products(self, primals: Sequence[Any], chunk: list[int]) -> Any:
        import torch

        diff = [primals[a] for a in self.argnums]
        dtype, device = diff[0].dtype, diff[0].device
        flat = self._flat_fn(primals)
        mode = self.plan.mode
        key = (tuple(chunk), dtype, str(device))
        if key not in self._seeds:
            size = self.plan.pattern.shape[0] if mode == REVERSE else sum(self.sizes)
            self._seeds[key] = seeds(self.plan.colours, size, chunk, dtype, device)
        s = self._seeds[key]
        if mode == FORWARD:

            def one(*tangent: Any) -> Any:
                return torch.func.jvp(flat, tuple(diff), tuple(tangent))[1]

            return self._map(one, self._split(s))
        if mode == REVERSE:
            _, pull = torch.func.vjp(flat, *diff)

            def one_rev(u: Any) -> Any:
                return torch.cat([g.reshape(-1) for g in pull(u)])

            return self._map(one_rev, [s])

        def scalar(*d: Any) -> Any:
            return flat(*d).sum()

        grad = torch.func.grad(scalar, argnums=tuple(range(len(diff))))

        def one_hvp(*tangent: Any) -> Any:
            out = torch.func.jvp(lambda *d: grad(*d), tuple(diff), tuple(tangent))[1]
            return torch.cat([g.reshape(-1) for g in out])

        return self._map(one_hvp, self._split(s))

    def _map(self, one: Callable[..., Any], batched: list) -> Any:
        import torch

        if self.vmapped:
            try:
                return torch.func.vmap(one)(*batched)
            except Exception:
                self.vmapped = False  # an op vmap cannot batch: one product at a time
        return torch.stack([one(*[b[i] for b in batched]) for i in range(batched[0].shape[0])])


def chunk_for(budget: int | None, colours: int, m: int, n: int, itemsize: int) -> int | None:
    """Colours per vmapped batch so that the products stay within ``budget`` bytes (None: all)."""
    if budget is None or colours == 0:
        return None
    per = work_per_colour(m, n, itemsize)
    return max(1, min(colours, budget // per)) if budget // per < colours else None


def work_per_colour(m: int, n: int, itemsize: int) -> int:
    """Bytes one colour's product takes while computed: seeds, product, transform's workspace."""
    return max(1, (m + 2 * n) * itemsize * 4)
