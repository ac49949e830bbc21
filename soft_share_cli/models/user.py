"""Import the user's own network factory (``--model module:callable``) and build it.

This is the one place where ssc runs code that is not its own: the code a user names
explicitly on the command line. Checkpoint files never get to choose it.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import importlib.util
import os
import re
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from soft_share_cli.errors import InputError
from soft_share_cli.models.builder import load_state_dict_checked


@contextlib.contextmanager
def _user_path(extra: Sequence[str]) -> Iterator[None]:
    saved = list(sys.path)
    sys.path[:0] = list(extra)
    try:
        yield
    finally:
        sys.path[:] = saved  # the user's import must not leave our process's path changed


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


def _import_file(path: Path) -> Any:
    if not path.is_file():
        raise InputError(f"model file {str(path)!r} does not exist")
    # A distinct name per file, so two user files called model.py do not replace each other.
    digest = hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:8]
    stem = re.sub(r"\W", "_", path.stem)
    name = f"_ssc_user_{stem}_{digest}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise InputError(f"model file {str(path)!r} cannot be imported as Python")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses and pickling look the module up by name
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return module


def load_factory(spec: str | Callable[[], nn.Module]) -> Callable[[], nn.Module]:
    """The network factory named by ``spec``: ``package.module:callable`` or ``file.py:callable``
    (or the callable itself, from Python).

    This imports and runs the user's OWN code: that is what naming a factory (``--model``)
    explicitly asks for. Checkpoints themselves are still never allowed to execute code. The
    current directory (and a file's own directory) is on ``sys.path`` during the import and each
    call, and ``sys.path`` is restored afterwards. The returned callable checks that the factory
    returns an ``nn.Module``. Every failure is an :class:`InputError` with one line.
    """
    if callable(spec):
        return _checked(spec, getattr(spec, "__qualname__", type(spec).__name__), [])
    where, sep, attr = spec.rpartition(":")
    if not sep or not where or not attr:
        raise InputError(
            f"model factory {spec!r} must look like 'package.module:callable' "
            "or 'path/to/file.py:callable'"
        )
    is_file = where.endswith(".py") or "/" in where or os.sep in where
    extra = [os.getcwd()] + ([str(Path(where).resolve().parent)] if is_file else [])
    with _user_path(extra):
        try:
            module = _import_file(Path(where)) if is_file else importlib.import_module(where)
        except InputError:
            raise
        except Exception as exc:
            raise InputError(
                f"model factory {spec!r}: importing {where!r} failed: {_first_line(exc)}"
            ) from exc
    target: Any = module
    for part in attr.split("."):
        if not hasattr(target, part):
            raise InputError(f"model factory {spec!r}: {where!r} has no attribute {attr!r}")
        target = getattr(target, part)
    if not callable(target):
        raise InputError(
            f"model factory {spec!r}: {attr!r} is a {type(target).__name__}, not a callable"
        )
    return _checked(target, spec, extra)


def _checked(factory: Callable[[], Any], spec: str, extra: list[str]) -> Callable[[], nn.Module]:
    """``factory`` run with ``extra`` on ``sys.path``; its failures and non-modules refused."""

    def build() -> nn.Module:
        with _user_path(extra):
            try:
                model = factory()
            except Exception as exc:
                raise InputError(f"model factory {spec!r} raised {_first_line(exc)}") from exc
        if not isinstance(model, nn.Module):
            raise InputError(
                f"model factory {spec!r} returned a {type(model).__name__}, not a torch.nn.Module"
            )
        return model

    return build


USER_ARCH = "user"  # the ``arch`` of a checkpoint of a user's network (``ssc share --model``)


def made_with(arch: Any, arch_kwargs: Any) -> str | None:
    """The ``--model`` factory a checkpoint of a user network says it was made with, if any.

    The name is data from the file, for messages only: it is never imported."""
    if arch != USER_ARCH or not isinstance(arch_kwargs, Mapping):
        return None
    spec = arch_kwargs.get("model")
    return spec if isinstance(spec, str) and 0 < len(spec) <= 1000 else None


def refuse_without_model(ckpt: Any, path: Any, doing: str) -> None:
    """Raise :class:`InputError` (one line) when ``ckpt`` holds a user network: only the user's
    factory can build it, so ``doing`` it needs ``--model`` (naming the factory it was made with).
    """
    if getattr(ckpt, "arch", None) != USER_ARCH:
        return
    spec = made_with(ckpt.arch, ckpt.arch_kwargs)
    hint = f"--model {spec}" if spec else "--model MODULE:CALLABLE"
    raise InputError(
        f"{path} holds your own network (arch 'user'), which only its factory builds: to {doing} "
        f"it pass {hint}" + (" (the factory it was made with)" if spec else "")
    )


def build_user_model(
    spec: str | Callable[[], nn.Module],
    state_dict: Mapping[str, Tensor],
    metadata: Mapping[str, Any] | None = None,
    where: str = "the checkpoint",
) -> nn.Module:
    """``factory()`` with ``state_dict`` loaded strictly (mismatches in one line), in eval mode.

    Where ``metadata`` holds a sharing record (``ssc share``,
    :data:`soft_share_cli.sharing.convert.RECORD_KEY`), the factory's network is given the shared
    structure it describes before loading: the record is checked before the factory runs, and
    against the built network before any bank is made (:class:`CheckpointError`, one line,
    naming ``where``).
    """
    record = None
    if metadata is not None:
        from soft_share_cli.sharing.convert import RECORD_KEY, apply_record, read_record

        record = metadata.get(RECORD_KEY)
        if record is not None:  # checked while it costs nothing: the factory has not run yet
            read_record(record, where)
    model = load_factory(spec)()
    name = spec if isinstance(spec, str) else getattr(spec, "__qualname__", "your factory")
    if record is not None:
        apply_record(model, record, where)
        name = f"the shared network built by {name} and {where}'s sharing record"
    else:
        name = f"the network built by {name}"
    load_state_dict_checked(model, state_dict, name)
    return model.eval()
