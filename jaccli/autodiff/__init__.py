"""The derivatives themselves: torch.func and torch.autograd engines, routes and what they trust.

- :mod:`.transforms`: the transforms over torch.func, result layouts and names;
- :mod:`.engines`: the torch.autograd engine (no vmap, no functorch wrapping);
- :mod:`.routing`: which engine and route answers, trials, fallbacks;
- :mod:`.kernels`, :mod:`.compiled`: steady-state kernels, ``--compile``;
- :mod:`.calls`, :mod:`.trust`: the first call's profile (mutation, randomness), finite results;
- :mod:`.modules`: ``nn.Module`` FUNCs, ``--wrt params``, ``--state``;
- :mod:`.devices`: ``--device``.
"""
