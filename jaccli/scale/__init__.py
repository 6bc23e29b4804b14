"""Results larger than memory, and more than one process.

- :mod:`.memory`: the plan: at once, in chunks, or streamed to the ``.npy`` written;
- :mod:`.chunks`: one Jacobian block a chunk of rows or columns at a time;
- :mod:`.streaming`: chunked blocks into memory or straight into a file;
- :mod:`.distributed`: sharding over the processes ``torchrun`` starts.
"""
