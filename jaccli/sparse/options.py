"""Command-line options of --sparse (click only: nothing heavy is imported here)."""

from __future__ import annotations

import click

sparse_options = [
    click.option(
        "--sparse",
        is_flag=True,
        help="Detect the sparsity pattern, colour it and compute one product per colour; the result "
        "is a scipy.sparse matrix (-o J.npz: scipy.sparse.save_npz, CSR; needs jaccli[sparse]). "
        "Written a block of colours at a time when it would not fit in --max-memory; under "
        "torchrun the colours shard over the ranks.",
    ),
    click.option(
        "--sparsity",
        metavar="P.npz",
        help="Use this sparsity pattern (a scipy.sparse .npz, e.g. from 'jac sparsity') instead of "
        "detecting one; implies --sparse.",
    ),
]


def sparse_option_group(fn):  # noqa: ANN001, ANN201 - a click decorator
    for option in reversed(sparse_options):
        fn = option(fn)
    return fn
