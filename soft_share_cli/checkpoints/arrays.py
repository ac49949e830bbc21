"""One vocabulary for the two kinds of tensors the analysis meets, without importing torch.

``ssc analyze`` reads zip and legacy checkpoints without torch (``load_checkpoint(path,
arrays=True)``): their tensors arrive as :class:`StoredArray`, read-only numpy views of the
file's bytes that the operating system pages in only when touched. Every other path gives torch
tensors. Bank discovery, similarity, parameter counts and architecture inference work on either
through the helpers below; none of them imports torch, because a torch tensor can only exist once
torch has been imported by someone else.
"""

from __future__ import annotations

import math
import mmap
import sys
from typing import Any

import numpy as np

#: Elements per chunk when a whole tensor is scanned (8 MiB of float32): bounded temporaries.
CHUNK_ELEMENTS = 1 << 21


class StoredArray(np.ndarray):
    """A tensor of a checkpoint read without torch: a read-only numpy view of the file's bytes.

    The subclass marks arrays that were tensors in the file (numpy arrays pickled inside a
    checkpoint, such as a training recorder's history, are plain ``ndarray`` subclasses of
    another kind) and remembers the mapping that backs them, so that whole-tensor scans can hand
    pages back as they go. Every view is proven inside the mapping before it is made
    (:mod:`soft_share_cli.checkpoints.mapped`).
    """

    mapped: MappedFile | None = None

    def __array_finalize__(self, obj: Any) -> None:
        self.mapped = getattr(obj, "mapped", None)

    def __setstate__(self, state: Any) -> None:
        # A pickle's BUILD on a tensor would have numpy re-point this view of the mapped file at
        # whatever the state says; the torch-free reader leaves such a file to torch's loader.
        raise TypeError("a pickle that sets the state of a stored tensor")


class MappedFile:
    """A read-only private mapping of a checkpoint file; tensors are views into it."""

    def __init__(self, fileno: int) -> None:
        self.map = mmap.mmap(fileno, 0, access=mmap.ACCESS_READ)
        self.bytes = np.frombuffer(self.map, dtype=np.uint8)
        self._base = int(self.bytes.ctypes.data)

    def release(self, array: np.ndarray) -> None:
        """Drop the resident pages under a contiguous ``array`` (they are re-read if touched).

        Scanning a 100 MB bank would otherwise leave all of it counted in the process's memory;
        the pages are clean file pages, so dropping them is always safe.
        """
        advice = getattr(mmap, "MADV_DONTNEED", None)
        if advice is None or not array.size:
            return
        start = int(array.ctypes.data) - self._base
        first = start - start % mmap.PAGESIZE
        last = start + array.nbytes
        if first >= 0 and last <= len(self.map):
            # Only whole pages inside the array; the boundary pages stay.
            first_whole = first if first == start else first + mmap.PAGESIZE
            length = (last - first_whole) // mmap.PAGESIZE * mmap.PAGESIZE
            if length > 0:
                self.map.madvise(advice, first_whole, length)


def _torch_tensor(x: Any) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(x, torch.Tensor)


def is_tensor(x: Any) -> bool:
    """Whether ``x`` is a tensor of a checkpoint: a torch tensor or a :class:`StoredArray`."""
    return isinstance(x, StoredArray) or _torch_tensor(x)


def shape(x: Any) -> tuple[int, ...]:
    """The shape as a tuple of ints."""
    return tuple(int(s) for s in x.shape)


def numel(x: Any) -> int:
    """Number of elements."""
    return math.prod(shape(x))


def is_floating(x: Any) -> bool:
    """Whether the elements are real floating-point numbers (as ``Tensor.is_floating_point``)."""
    if isinstance(x, np.ndarray):
        return bool(np.issubdtype(x.dtype, np.floating))
    return bool(x.is_floating_point())


def dtype_name(x: Any) -> str:
    """``float32``, ``float16``, ... (torch's spelling without the ``torch.`` prefix)."""
    if isinstance(x, np.ndarray):
        return str(x.dtype)
    return str(x.dtype).removeprefix("torch.")


def storage_key(x: Any) -> tuple[Any, ...]:
    """Equal for two tensors exactly when they view the same bytes the same way."""
    if isinstance(x, np.ndarray):
        return ("array", int(x.ctypes.data), x.dtype.str, x.size, x.strides)
    return (
        "torch",
        x.untyped_storage().data_ptr(),
        int(x.storage_offset()),
        x.numel(),
        tuple(x.stride()),
    )


def to_float64(x: Any) -> np.ndarray:
    """A flat float64 numpy copy (for small tensors such as coefficient vectors)."""
    if isinstance(x, np.ndarray):
        return np.array(x, dtype=np.float64).reshape(-1)
    import torch

    return x.detach().reshape(-1).to(device="cpu", dtype=torch.float64).numpy().copy()


def float64_rows(x: Any, start: int, stop: int) -> np.ndarray:
    """Columns ``start:stop`` of ``x`` flattened to ``(len, -1)``, as float64 numpy."""
    if isinstance(x, np.ndarray):
        return np.asarray(x.reshape(x.shape[0], -1)[:, start:stop], dtype=np.float64)
    import torch

    flat = x.detach().reshape(x.shape[0], -1)
    return flat[:, start:stop].to(device="cpu", dtype=torch.float64).numpy()


def all_finite(x: Any) -> bool:
    """Whether no element is NaN or infinite; a mapped tensor is scanned in bounded chunks."""
    if numel(x) == 0:
        return True
    if not isinstance(x, np.ndarray):
        import torch

        # min and max propagate NaN and reach any infinity: one pass, no boolean temporary
        # (8x faster than isfinite().all() on a 60 MB bank).
        low, high = torch.aminmax(x.detach())
        return bool(torch.isfinite(low) & torch.isfinite(high))
    flat = x.reshape(-1)
    mapped = getattr(x, "mapped", None)
    for start in range(0, flat.size, CHUNK_ELEMENTS):
        chunk = flat[start : start + CHUNK_ELEMENTS]
        finite = bool(np.isfinite(chunk.min()) and np.isfinite(chunk.max()))
        if mapped is not None and chunk.flags.c_contiguous:
            mapped.release(chunk)
        if not finite:
            return False
    return True


def any_nonzero(x: Any) -> bool:
    """Whether some element is non-zero."""
    if isinstance(x, np.ndarray):
        return bool(np.any(x))
    return bool(x.detach().any())


def equal(a: Any, b: Any) -> bool:
    """Same shape, dtype and values (``torch.equal``), across both kinds of tensor."""
    if isinstance(a, np.ndarray) and isinstance(b, np.ndarray):
        return a.dtype == b.dtype and a.shape == b.shape and bool(np.array_equal(a, b))
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return False  # one file never mixes the two kinds
    import torch

    return a.dtype == b.dtype and torch.equal(a, b)
