"""Colourings: which columns (or rows) of a sparse Jacobian can share one product.

- column colouring (forward mode, one JVP per colour): columns that share no row get the same
  colour, a distance-2 colouring of the column intersection graph PᵀP;
- row colouring (reverse mode, one VJP per colour): the same for Pᵀ;
- star colouring (Hessians, one Hessian-vector product per colour): a distance-1 colouring of
  the symmetric pattern in which every path on four vertices uses at least three colours, so
  every entry H[i, j] can be read directly from the compressed product, from column j or, by
  symmetry, from column i (Gebremedhin, Manne and Pothen, SIAM Review 47(4), 2005, Alg. 4.1).

Greedy colourings in a few vertex orders are tried and the one with fewest colours is kept;
every colouring is verified before use (:func:`valid_columns`, :func:`valid_symmetric`), and a
star colouring that fails the check is replaced by a column colouring, which is always valid.
"""

from __future__ import annotations

from typing import Any

CHUNK = 65_536  # vertices whose neighbour lists are turned into Python lists at once


def column_colouring(pattern: Any) -> Any:
    """Colours of the columns of ``pattern`` (csr, rows x columns): int64 array."""
    import numpy as np
    import scipy.sparse as sp

    p = sp.csr_matrix(pattern, dtype=bool)
    n = p.shape[1]
    if n == 0:
        return np.zeros(0, np.int64)
    graph = (p.T.tocsr() @ p).tocsr()
    graph.sort_indices()
    return _best_greedy(graph)


def row_colouring(pattern: Any, columns: Any = None) -> Any:
    """Colours of the rows; ``columns`` (the column colouring) is reused for a symmetric pattern."""
    import scipy.sparse as sp

    p = sp.csr_matrix(pattern, dtype=bool)
    if columns is not None and p.shape[0] == p.shape[1] and (p != p.T).nnz == 0:
        return columns
    return column_colouring(p.T.tocsr())


def _best_greedy(graph: Any) -> Any:
    import numpy as np

    n = graph.shape[0]
    degree = np.diff(graph.indptr)
    orders = [np.arange(n)]
    if n <= 2_000_000 and degree.min() != degree.max():
        orders.append(np.argsort(-degree, kind="stable"))  # largest first
    best = None
    for order in orders:
        colours = _greedy(graph, order)
        if best is None or colours.max() < best.max():
            best = colours
    return best


def _greedy(graph: Any, order: Any) -> Any:
    """First-fit colouring of ``graph`` (csr, symmetric) in ``order``: no two neighbours share a colour."""
    import numpy as np

    n = graph.shape[0]
    indptr, indices = graph.indptr, graph.indices
    colour = [-1] * n
    forbidden = [-1] * 8
    natural = bool(np.all(order == np.arange(n)))
    order_list = order.tolist()
    for start in range(0, n, CHUNK):
        chunk = order_list[start : start + CHUNK]
        if natural:  # the chunk's neighbour lists are one slice: one conversion to Python ints
            base = int(indptr[start])
            flat = indices[base : int(indptr[min(n, start + CHUNK)])].tolist()
            bounds = (indptr[start : min(n, start + CHUNK) + 1] - base).tolist()
        for i, v in enumerate(chunk):
            if natural:
                neighbours = flat[bounds[i] : bounds[i + 1]]
            else:
                neighbours = indices[int(indptr[v]) : int(indptr[v + 1])].tolist()
            for w in neighbours:
                c = colour[w]
                if c >= 0:
                    forbidden[c] = v
            c = 0
            while c < len(forbidden) and forbidden[c] == v:
                c += 1
            if c == len(forbidden):
                forbidden.append(-1)
            colour[v] = c
    return np.asarray(colour, dtype=np.int64)


def star_colouring(hessian: Any) -> Any:
    """Colours of a symmetric pattern (csr n x n) for direct symmetric recovery."""
    import numpy as np
    import scipy.sparse as sp

    h = sp.csr_matrix(hessian, dtype=bool)
    n = h.shape[0]
    if n == 0:
        return np.zeros(0, np.int64)
    adj = (h + h.T).tolil()
    adj.setdiag(False)
    adj = sp.csr_matrix(adj, dtype=bool)
    adj.eliminate_zeros()
    adj.sort_indices()
    best = None
    degree = np.diff(adj.indptr)
    for order in (np.arange(n), np.argsort(-degree, kind="stable")):
        colours = _star(adj, order)
        if valid_symmetric(h, colours) and (best is None or colours.max() < best.max()):
            best = colours
    if best is None:  # never seen; a column colouring always recovers directly
        best = column_colouring(h)
    return best


def _star(adj: Any, order: Any) -> Any:
    import numpy as np

    n = adj.shape[0]
    indptr, indices = adj.indptr, adj.indices
    neighbours = [indices[indptr[v] : indptr[v + 1]].tolist() for v in range(n)]
    colour = [-1] * n
    forbidden = [-1] * 8
    for v in order.tolist():
        for w in neighbours[v]:
            cw = colour[w]
            if cw >= 0:
                forbidden[cw] = v
        for w in neighbours[v]:
            cw = colour[w]
            for x in neighbours[w]:
                if x == v:
                    continue
                cx = colour[x]
                if cx < 0:
                    continue
                if cw < 0:
                    forbidden[cx] = v
                else:
                    for y in neighbours[x]:
                        if y != w and colour[y] == cw:
                            forbidden[cx] = v
                            break
        c = 0  # the first free colour, inline as in _greedy (a call per vertex: +20% at n = 1e6)
        while c < len(forbidden) and forbidden[c] == v:
            c += 1
        if c == len(forbidden):
            forbidden.append(-1)
        colour[v] = c
    return np.asarray(colour, dtype=np.int64)


def counts(pattern: Any, colours: Any) -> Any:
    """(rows x colours) csr: how many columns of each colour every row holds."""
    import numpy as np
    import scipy.sparse as sp

    p = sp.csr_matrix(pattern, dtype=bool)
    k = int(colours.max()) + 1 if len(colours) else 0
    rows = np.repeat(np.arange(p.shape[0]), np.diff(p.indptr))
    return sp.csr_matrix((np.ones(len(rows), np.int64), (rows, colours[p.indices])), shape=(p.shape[0], k))


def valid_columns(pattern: Any, colours: Any) -> bool:
    """No row holds two columns of one colour (direct recovery from J·seed)."""
    import numpy as np
    import scipy.sparse as sp

    p = sp.csr_matrix(pattern, dtype=bool)
    if len(colours) != p.shape[1]:
        return False
    if p.nnz == 0:
        return True
    c = counts(p, np.asarray(colours, np.int64))
    return int(c.data.max()) <= 1


def valid_symmetric(hessian: Any, colours: Any) -> bool:
    """Every H[i, j] is alone in its colour in row i, or H[j, i] in row j."""
    import numpy as np
    import scipy.sparse as sp

    h = sp.csr_matrix(hessian, dtype=bool)
    h = sp.csr_matrix(h + h.T, dtype=bool)
    colours = np.asarray(colours, np.int64)
    if len(colours) != h.shape[0]:
        return False
    if h.nnz == 0:
        return True
    rows = np.repeat(np.arange(h.shape[0]), np.diff(h.indptr))
    cols = h.indices
    direct, mirrored = symmetric_sources(h, colours, rows, cols)
    return bool(np.all(direct | mirrored))


def symmetric_sources(h: Any, colours: Any, rows: Any, cols: Any) -> tuple[Any, Any]:
    """Per entry (rows[e], cols[e]): readable directly (alone in its colour in its row), or
    from the mirrored entry."""
    import numpy as np

    c = counts(h, colours).tocsr()
    k = c.shape[1]
    dense_ok = h.shape[0] * max(k, 1) <= 50_000_000
    if dense_ok:
        table = c.toarray()
        direct = table[rows, colours[cols]] == 1
        mirrored = table[cols, colours[rows]] == 1
    else:
        direct = np.asarray(c[rows, colours[cols]]).ravel() == 1
        mirrored = np.asarray(c[cols, colours[rows]]).ravel() == 1
    return direct, mirrored
