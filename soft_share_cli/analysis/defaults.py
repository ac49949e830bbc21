"""Defaults shared by the library and the CLI; importing this module costs nothing."""

# Layers whose similarity is at least this may share one weight after folding. At |cos| = tau
# the least-squares residual of a layer is sqrt(1 - tau^2) of its coefficient norm: 14 % at
# 0.99, 31 % at 0.95. The README shows the accuracy this costs on the samples.
DEFAULT_THRESHOLD = 0.99
