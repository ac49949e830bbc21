"""Defaults and choices shared by the library and the CLI; importing this module costs nothing
(no numpy), so ``ssc --help`` can list the choices."""

import enum

# Layers whose similarity is at least this may share one weight after folding. At |cos| = tau
# the least-squares residual of a layer is sqrt(1 - tau^2) of its coefficient norm: 14 % at
# 0.99, 31 % at 0.95. The README shows the accuracy this costs on the samples.
DEFAULT_THRESHOLD = 0.99


class Metric(str, enum.Enum):
    """What two layers of a bank are compared by."""

    COEFFICIENTS = "coefficients"  # the paper's LSM: cosine of the coefficient vectors
    WEIGHT = "weight"  # cosine of the generated weights, through the templates' Gram matrix


class Linkage(str, enum.Enum):
    """How the similarity between two groups of layers is measured when merging them.

    ``COMPLETE`` (the default) uses the least similar pair, so every pair in a cluster meets the
    threshold, which is what folding needs; ``AVERAGE`` the mean over pairs; ``SINGLE`` the most
    similar pair, which chains (A~B, B~C puts A with C however far apart they are).
    """

    COMPLETE = "complete"
    AVERAGE = "average"
    SINGLE = "single"
