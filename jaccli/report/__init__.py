"""What people read: the timing table, results as text, pictures and progress bars.

- :mod:`.timing`: phases and repeated series (min / median / max), the footer;
- :mod:`.render`: results in the numpy style, the timing table, check reports;
- :mod:`.pictures`, :mod:`.styled`: Jacobian heatmaps in the terminal and ``--plot`` images;
- :mod:`.progress`: progress bars on standard error;
- :mod:`.record`: the reproducibility record of machine-readable outputs.
"""
