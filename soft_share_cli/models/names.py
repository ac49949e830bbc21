"""The names of the architectures ssc builds, by family; importing this module loads no torch,
so the command line can list them (the constructors are :mod:`soft_share_cli.models.registry`)."""

CLASSIFIERS = ("swrn", "wrn")  # wide ResNets for whole-image classification
TASK_NETWORKS = ("sfcn", "fcn")  # fully convolutional residual nets for per-pixel tasks
SOFT_SHARED = ("swrn", "sfcn")  # the ones built from template banks (they take K)
