"""The names of the architectures ssc builds, by family; importing this module loads no torch,
so the command line can list them (the constructors are :mod:`soft_share_cli.models.registry`)."""

CLASSIFIERS = ("swrn", "wrn")  # wide ResNets for whole-image classification
# fully convolutional residual nets for per-pixel tasks; rfcn: one block looped (recurrent)
TASK_NETWORKS = ("sfcn", "fcn", "rfcn")
SOFT_SHARED = ("swrn", "sfcn")  # the ones built from template banks (they take K)
RFCN_BLOCKS = ("residual", "projection")  # rfcn's looped block (models.recurrent_net)
