"""Post-hoc sharing (``ssc share``): a trained plain CNN rewritten as template banks.

:mod:`.svd` fits K templates to a group of same-shape layers (cross-layer truncated SVD),
:mod:`.groups` finds the groups, :mod:`.convert` rewrites the network (and rebuilds a shared
user network from the record its checkpoint keeps).
"""
