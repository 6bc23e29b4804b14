"""``jac check``'s rows: are a function's derivatives right?

- :mod:`.rows`: the checks, their tolerances and the report;
- :mod:`.modes`: the forward and reverse engines compared, each with its fallbacks;
- :mod:`.more`: Taylor remainder, batched rules, second order, repeatability;
- :mod:`.plan`: what a check can afford and what it must refuse.
"""
