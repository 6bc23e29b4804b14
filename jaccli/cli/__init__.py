"""Front ends: the ``jac`` command line and the warm server's client and server.

- :mod:`.commands`: the click commands, thin over :mod:`jaccli.pipeline`;
- :mod:`.options`: option types and the option groups the transform commands share;
- :mod:`.configs`: YAML config files (``jac run FILE``, ``--config``);
- :mod:`.client`: the entry point, through a warm server when one answers;
- :mod:`.server`, :mod:`.serve`: ``jac serve`` and its click side;
- :mod:`.info`: ``jac info``.
"""
