"""Linear algebra on a Jacobian that is never formed: products along many directions at once
(:mod:`.directions`, ``--directions K``) and its spectrum from products alone
(:mod:`.spectrum`, ``jac spectrum``), both over the flat operators of :mod:`.operators`.
"""
