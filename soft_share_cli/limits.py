"""Resource limits: the largest sizes ssc accepts from a file before it allocates anything.

A checkpoint or folded file *declares* sizes: numbers of keys, banks and layers, nesting depth
of its metadata, and the depths, widths, template, cluster and iteration counts from which a
network is built. Each is checked here, against a documented limit, before it drives an
allocation, a quadratic computation or a recursion; a file beyond a limit is refused with
:class:`~soft_share_cli.errors.CheckpointError` (exit 2) naming the limit, e.g.
``... declares 1000000000 iterations; ssc reads at most 10000 (limits.MAX_ITERATIONS)``.

The values are generous for real networks (ImageNet models have fewer than 2,000 keys; WRN-1202
has about 600 layers per bank; the widest WRNs have 640 channels), and small enough that the
worst a file can ask for within them stays a matter of seconds and megabytes. A network's size
is also checked against the tensors the file really holds (:func:`check_built_size`): a file
cannot ask for a network larger than the weights it stores.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from typing import Any

from soft_share_cli.errors import CheckpointError

#: Tensors (state-dict keys) in one checkpoint. ImageNet networks have fewer than 2,000 and deep
#: CIFAR ResNets (with every bank alias) a few thousand; 50k leaves room for anything real while
#: bounding the per-key work of the pickle scan and analysis: a file beyond it is refused after
#: scanning at most 50k tensor records (about 2.5 s on a 2-core machine; a million keys took
#: minutes and GBs before this bound).
MAX_KEYS = 50_000
#: Template banks in one state dict. The paper's networks have 3, a user network perhaps one per
#: layer group; grouping alias copies compares banks pairwise, so their number must stay small.
MAX_BANKS = 1_000
#: Shared layers drawing on one bank. WRN-1202-style depths have ~400 per bank; the layer
#: similarity matrix and its clustering are quadratic (and the linkage cubic) in this number.
MAX_LAYERS_PER_BANK = 2_000
#: Nesting depth of containers in metadata: JSON in safetensors headers and pickled lists,
#: dicts and tuples. Real metadata nests fewer than 10 levels; deeper input would make Python's
#: recursive parsers and walkers fail (RecursionError) near 1,000.
MAX_NESTING = 100
#: Characters of one JSON metadata string (a folded file's program or report, the ``ssc``
#: header of a safetensors file). The program of a 10,000-block network is under 2 MB.
MAX_METADATA_BYTES = 16 * 2**20
#: Blocks (loop iterations) a network or loop program may declare in all. WRN-1202-style nets
#: have ~200 blocks per stage; thinking-longer runs of looped FCNs a few hundred.
MAX_ITERATIONS = 10_000
#: Depth of an (S)WRN (6n + 4): 3,004 means 500 blocks per stage (WRN-1202-style networks
#: have 200). Building the network's skeleton costs about a millisecond per block.
MAX_DEPTH = 6 * 500 + 4
#: Residual blocks of a fully convolutional net (FCN/SFCN); real ones have tens.
MAX_BLOCKS = 2_000
#: Width multiplier of an (S)WRN (stage 3 has 64 x width channels: 64 is 4,096 channels).
MAX_WIDTH = 64
#: Channels of any conv ssc builds (FCN width, input channels). The widest real WRN has 640.
MAX_CHANNELS = 4_096
#: Output classes (ImageNet-21k has 21,841).
MAX_CLASSES = 100_000
#: Templates per bank (K). The paper uses 1 to 16; a few hundred is already extreme.
MAX_TEMPLATES = 4_096
#: Clusters (distinct weights) of a folded bank: at most its layers.
MAX_CLUSTERS = MAX_LAYERS_PER_BANK
#: Loop segments of a folded network: at most one per block.
MAX_SEGMENTS = MAX_ITERATIONS


def limit_error(what: str, declared: Any, limit: int, name: str) -> CheckpointError:
    """The one-line error for a declared size beyond ``limits.<name>`` (= ``limit``)."""
    return CheckpointError(
        f"{what}: declares {declared}; ssc reads at most {limit} (limits.{name})"
    )


def count(value: Any, what: str, *, limit: int, name: str, minimum: int = 0) -> int:
    """``value`` as an int in ``[minimum, limit]``; ValueError (or the limit's error) otherwise.

    Only real ints count: a bool, float (NaN, infinity, 1.5 or even 2.0), string or None is
    refused with :class:`ValueError` (callers report it as a malformed file); an int above
    ``limit`` raises :class:`~soft_share_cli.errors.CheckpointError` naming the limit.
    """
    if type(value) is not int:
        plain = isinstance(value, int | float) or value is None
        shown = repr(value) if plain else f"a {type(value).__name__}"
        raise ValueError(f"{what} should be an integer, got {shown}")
    if value < minimum:
        raise ValueError(f"{what} should be at least {minimum}, got {value}")
    if value > limit:
        raise limit_error(what, value, limit, name)
    return value


def check_keys(keys: int, where: str) -> None:
    """Refuse a state dict of more than :data:`MAX_KEYS` tensors."""
    if keys > MAX_KEYS:
        raise limit_error(where, f"{keys} tensors", MAX_KEYS, "MAX_KEYS")


def nesting_depth(value: Any) -> int:
    """Container nesting depth of a parsed JSON/pickle value, iteratively (never recurses).

    Scalars are 0, ``[]`` and ``{}`` are 1, ``[[1]]`` is 2. Stops counting past
    :data:`MAX_NESTING` + 1 levels (the answer is then only known to exceed the limit).
    """
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Iterable[Any] = list(item.keys()) + list(item.values())
        elif isinstance(item, list | tuple | set | frozenset):
            children = item
        else:
            continue
        depth += 1
        deepest = max(deepest, depth)
        if depth > MAX_NESTING:
            return depth
        stack.extend((child, depth) for child in children)
    return deepest


def check_nesting(value: Any, where: str) -> None:
    """Refuse ``value`` when its containers nest deeper than :data:`MAX_NESTING`."""
    if nesting_depth(value) > MAX_NESTING:
        raise _too_deep(where)


def _too_deep(where: str) -> CheckpointError:
    return CheckpointError(
        f"{where}: nested more than {MAX_NESTING} levels deep; ssc reads at most "
        f"{MAX_NESTING} (limits.MAX_NESTING)"
    )


def loads_json(text: str | bytes, where: str) -> Any:
    """``json.loads`` with a nesting bound; ValueError for text that is not JSON.

    Python's JSON decoder recurses once per level and fails near 1,000 (RecursionError); that
    and any nesting past :data:`MAX_NESTING` raise a :class:`CheckpointError` naming the limit.
    """
    if len(text) > MAX_METADATA_BYTES:
        raise limit_error(where, f"{len(text)} bytes", MAX_METADATA_BYTES, "MAX_METADATA_BYTES")
    try:
        value = json.loads(text)
    except RecursionError:
        raise _too_deep(where) from None
    check_nesting(value, where)
    return value


def check_built_size(built: int, held: int, where: str) -> None:
    """Refuse to build a network of ``built`` numbers from a file holding only ``held``.

    ``held`` counts each distinct stored tensor once (aliases of one storage do not add up), so
    a small file whose keys all view one storage cannot ask for a network of many such tensors.
    """
    if built > held:
        raise CheckpointError(
            f"{where}: declares a network of {built} numbers but stores only {held}; "
            "a file cannot declare more than it holds"
        )


def finite_number(value: Any, what: str) -> float:
    """``value`` as a finite float (an int or float, not a bool); ValueError otherwise."""
    if type(value) not in (int, float) or not math.isfinite(value):
        raise ValueError(f"{what} should be a finite number, got {value!r}")
    return float(value)


# --- data sets (``--data``) ----------------------------------------------------------------------
# Checked by soft_share_cli.data (npz, cifar, folder, tasks) against what a data file
# *declares* (npz headers, CIFAR arrays, image headers) before anything is allocated; beyond one,
# a DataError (exit 2) names the file and the limit. MAX_CLASSES and MAX_CHANNELS above bound
# labels and channels.

#: Samples in one split (npz arrays, CIFAR batches together, folder images, generated tasks'
#: ``count``). CIFAR has 60,000; a million bounds label lists and per-sample work.
MAX_SAMPLES = 1_000_000
#: Bytes of one split's images as ssc holds them (float32, N x C x H x W x 4), of any array an npz
#: member or a CIFAR batch declares, and of a generated task's arrays. CIFAR-10's train split is
#: 630 MB.
MAX_DATA_BYTES = 2 * 2**30
#: Pixels (width x height) of one image: a folder image (checked on its header, before it is
#: decoded), an npz image or a generated task instance. 2048 x 2048; mazes of 256 cells are 513^2.
MAX_IMAGE_PIXELS = 2**22
#: Size of one CIFAR batch file (CIFAR-100's training batch, the largest, is 155 MB).
MAX_BATCH_BYTES = 256 * 2**20
#: A compressed npz member may inflate to at most this many times its compressed size, unless it
#: declares at most :data:`INFLATION_EXEMPT_BYTES` (sorted labels compress ~1000x); arrays of
#: zeros compress ~1000x, so a small file cannot ask for gigabytes. Save with ``np.savez`` (not
#: ``savez_compressed``) to lift it.
MAX_INFLATION = 100
#: Members up to this size are exempt from :data:`MAX_INFLATION`.
INFLATION_EXEMPT_BYTES = 32 * 2**20
#: Pickle opcodes in one CIFAR batch. The largest real batch (CIFAR-100's, 50,000 samples with
#: fine and coarse labels and file names) has about 500,000; the pure-Python unpickler ssc uses
#: takes about a microsecond each, so this bounds a forged batch to a few seconds.
MAX_BATCH_OPCODES = 2_000_000
