"""Everything that crosses the process boundary: the user's function, input files, outputs.

- :mod:`.loading`: ``FUNC`` (``mod:name``, ``file.py:name``, ``mod:factory()``), imported safely;
- :mod:`.shadowing`: the user's files never shadow jac's own imports;
- :mod:`.inputs`, :mod:`.safeyaml`: array sources (``.npy``, ``.npz``, YAML, stdin, generators),
  never unpickled;
- :mod:`.arguments`: sources matched to the function's arguments and output (primals,
  tangents, cotangents);
- :mod:`.outputs`, :mod:`.npyfile`, :mod:`.tempfiles`: atomic writers, ``.npy`` written piece by
  piece, the temporary files that become outputs;
- :mod:`.streams`: standard output as pipelines need it.
"""
