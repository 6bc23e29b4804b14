"""Softmax attention through torch's fused kernel, which has no forward-mode formula on the CPU.

jac jvp examples/attention.py:block -p randn:4,8 -t randn     # falls back, and says so
jac jacobian examples/attention.py:block -p randn:4,8 --engine func --mode rev
"""

import torch
import torch.nn.functional as F


def block(x: torch.Tensor) -> torch.Tensor:
    """Self-attention of a (tokens, features) matrix with itself as query, key and value."""
    q = x.unsqueeze(0).unsqueeze(0)
    return F.scaled_dot_product_attention(q, q, q).squeeze(0).squeeze(0)
