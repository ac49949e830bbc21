"""Which globals a checkpoint may name: allowed, refused, or replaced by an inert placeholder.

:func:`classify` sorts the dotted names :mod:`soft_share_cli.checkpoints.scan` finds in a pickle
into three groups:

* allowed: what ``torch.load(weights_only=True)`` already accepts (:func:`torch_allowed_names`),
  plus numpy's array and scalar reconstructors (:func:`numpy_safe_globals`; the authors'
  ``RecorderMeter`` holds numpy arrays);
* refused: the standard library (it can run commands, open files, evaluate code), any other
  ``torch.*``/``numpy.*`` global, and third-party packages known to run code on unpickling;
* placeholder: every other name (``utils.RecorderMeter``, ``__main__.Thing``, and the stdlib's
  ``argparse.Namespace``) is replaced at load time by an inert :class:`InertObject` subclass that
  only stores what it is given (:func:`make_placeholders`).
"""

from __future__ import annotations

import functools
import importlib
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

# Python 2 names that ``sys.stdlib_module_names`` (a Python 3 list) does not know.
_PY2_SYSTEM_MODULES = frozenset(
    {"__builtin__", "__builtins__", "copy_reg", "posix", "nt", "commands", "popen2", "exceptions"}
)

# Harmless standard-library data holders common in training checkpoints (``args``): replaced by a
# placeholder like a user class instead of refused. Nothing of the real class is ever used.
_INERT_STDLIB = frozenset({"argparse.Namespace"})

# Third-party packages whose globals run code, spawn processes or reach the network when called.
# A placeholder would defuse them too, but a checkpoint naming them is hostile or foreign: refuse.
_CODE_RUNNING_PACKAGES = frozenset(
    {
        "dill", "cloudpickle", "joblib", "yaml", "ruamel", "pandas", "IPython", "ipykernel",
        "jupyter_client", "numexpr", "sympy", "jinja2", "mako", "pip", "setuptools",
        "pkg_resources", "pytest", "_pytest", "pexpect", "ptyprocess", "sh", "plumbum",
        "invoke", "fabric", "paramiko", "requests", "urllib3", "httpx", "aiohttp", "boto3",
        "botocore", "psutil", "docker", "tensorflow", "keras", "jax",
    }
)  # fmt: skip


@functools.lru_cache(maxsize=1)
def torch_allowed_names() -> frozenset[str]:
    """Globals torch's weights-only unpickler accepts without being told (private API, guarded)."""
    try:
        from torch._weights_only_unpickler import _get_allowed_globals

        return frozenset(_get_allowed_globals())
    except Exception:  # pragma: no cover - only on a torch that renamed its private helper
        import torch

        names = {
            "collections.OrderedDict", "torch.Size", "torch.Tensor", "torch.device",
            "torch.nn.parameter.Parameter", "torch.serialization._get_layout",
            "torch._utils._rebuild_tensor", "torch._utils._rebuild_tensor_v2",
            "torch._utils._rebuild_parameter", "torch._utils._rebuild_parameter_with_state",
            "torch.storage.TypedStorage", "torch.storage.UntypedStorage",
        }  # fmt: skip
        names |= {f"torch.{n}" for n in dir(torch) if n.endswith("Storage")}
        names |= {str(v) for v in vars(torch).values() if isinstance(v, torch.dtype)}
        return frozenset(names)


@functools.lru_cache(maxsize=1)
def numpy_safe_globals() -> tuple[tuple[Any, str], ...]:
    """numpy's array, dtype and scalar reconstructors under every name numpy 1.x/2.x pickles.

    They rebuild arrays from raw bytes and never import or call anything named in the file.
    ``copyreg._reconstructor`` is deliberately absent: only protocol 0/1 pickles use it, and
    torch's weights-only unpickler cannot read those anyway.
    """
    import numpy as np

    try:
        from numpy._core import multiarray
    except ImportError:  # numpy < 2
        from numpy.core import multiarray  # type: ignore[no-redef]

    pairs: list[tuple[Any, str]] = [(np.ndarray, "numpy.ndarray"), (np.dtype, "numpy.dtype")]
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        pairs.append((multiarray._reconstruct, f"{module}._reconstruct"))
        pairs.append((multiarray.scalar, f"{module}.scalar"))
    try:
        dtypes = importlib.import_module("numpy.dtypes")  # numpy >= 1.25
    except ImportError:  # pragma: no cover
        dtypes = None
    for attr in dir(dtypes) if dtypes is not None else ():
        obj = getattr(dtypes, attr)
        if isinstance(obj, type) and issubclass(obj, np.dtype):
            pairs.append((obj, f"numpy.dtypes.{attr}"))
    return tuple(pairs)


@dataclass(frozen=True)
class Verdict:
    """How the globals of a checkpoint were classified (each tuple sorted)."""

    refused: tuple[str, ...]
    placeholders: tuple[str, ...]


def _is_refused(dotted: str) -> bool:
    if dotted in _INERT_STDLIB:
        return False
    parts = dotted.split(".")
    if len(parts) < 2 or not all(part.isidentifier() for part in parts):
        return True  # "<computed ...>" markers and malformed names
    top = parts[0]
    return (
        top in sys.stdlib_module_names
        or top in _PY2_SYSTEM_MODULES
        or top in ("torch", "numpy")
        or top in _CODE_RUNNING_PACKAGES
    )


def classify(names: Iterable[str], allowed: frozenset[str] | None = None) -> Verdict:
    """Sort dotted global names into refused ones and ones to replace by placeholders.

    Allowed names (torch's own list and :func:`numpy_safe_globals`) appear in neither tuple.
    ``allowed`` replaces that list by a subset of it (checking against torch's list imports
    torch): names it leaves out may then be refused that torch would allow, never the reverse.
    """
    if allowed is None:
        allowed = torch_allowed_names() | {name for _, name in numpy_safe_globals()}
    pending = [name for name in set(names) if name not in allowed]
    refused = sorted(name for name in pending if _is_refused(name))
    placeholders = sorted(name for name in pending if not _is_refused(name))
    return Verdict(tuple(refused), tuple(placeholders))


class InertObject:
    """Stands in for a class a checkpoint names: it stores what it is given and does nothing.

    ``inert_args``/``inert_kwargs`` hold constructor arguments; pickled state lands in
    ``__dict__`` (so ``vars(obj)`` reads like the original object's attributes), or under
    ``state`` when it is not a dict.
    """

    __slots__ = ("inert_args", "inert_kwargs", "__dict__")

    def __new__(cls, *args: Any, **kwargs: Any) -> InertObject:
        # NEWOBJ calls __new__ without __init__; keep the arguments either way.
        self = super().__new__(cls)
        self.inert_args, self.inert_kwargs = args, kwargs
        return self

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.inert_args, self.inert_kwargs = args, kwargs

    def __setstate__(self, state: Any) -> None:
        # (dict, slots-dict) is what objects with __slots__ pickle as.
        if (
            isinstance(state, tuple)
            and len(state) == 2
            and all(part is None or isinstance(part, dict) for part in state)
        ):
            for part in state:
                self.__dict__.update(part or {})
        elif isinstance(state, dict):
            self.__dict__.update(state)
        else:
            self.__dict__["state"] = state

    def __repr__(self) -> str:
        return f"<inert placeholder for {type(self).__module__}.{type(self).__qualname__}>"


def make_placeholders(names: Iterable[str]) -> list[tuple[type[InertObject], str]]:
    """One fresh :class:`InertObject` subclass per dotted name, paired with that name."""
    pairs = []
    for dotted in names:
        module, _, qualname = dotted.rpartition(".")
        cls = type(qualname, (InertObject,), {"__module__": module, "__qualname__": qualname})
        pairs.append((cls, dotted))
    return pairs
