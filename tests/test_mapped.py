"""Reading checkpoints without torch (``load_checkpoint(arrays=True)``), as ``ssc analyze`` does.

The contract: for every file the torch-free reader accepts, the analysis is byte-identical to the
one over torch's loader; for every file it does not model, it steps aside and torch's loader
answers (refusals and errors included, word for word).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from soft_share_cli.analysis.analyze import AnalysisOptions
from soft_share_cli.analysis.clustering import Linkage
from soft_share_cli.analysis.similarity import Metric
from soft_share_cli.checkpoints.arrays import StoredArray
from soft_share_cli.checkpoints.load import load_checkpoint, save_checkpoint
from soft_share_cli.errors import CheckpointError, UnsafeCheckpointError
from soft_share_cli.models.params import count_state_dict_parameters
from soft_share_cli.models.wrn import SWRN
from soft_share_cli.pipeline.analyze import analyze_checkpoint

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "sample_checkpoints"
# the soft-shared samples (the plain wrn28-1_digits.pt has no bank to analyse)
SAMPLE_FILES = sorted(p.name for p in SAMPLES.glob("*.p*") if p.name != "wrn28-1_digits.pt")
LEGACY = {"_use_new_zipfile_serialization": False}
FORMATS = [pytest.param({}, id="zip"), pytest.param(LEGACY, id="legacy")]


def analysis_json(path: Path, options: AnalysisOptions, monkeypatch: Any, arrays: bool) -> str:
    """The analysis of ``path`` read with (or, forced, without) the torch-free reader."""
    import soft_share_cli.checkpoints.load as checkpoint

    original = checkpoint.load_checkpoint

    def load(p: Any, *, mmap: bool = True, arrays: bool = False, key: Any = None) -> Any:
        return original(p, mmap=mmap, arrays=arrays and use_arrays, key=key)

    use_arrays = arrays
    monkeypatch.setattr(checkpoint, "load_checkpoint", load)
    result = analyze_checkpoint(path, options)
    monkeypatch.undo()
    return json.dumps(result.to_dict(), sort_keys=True)


def authors_like(tmp_path: Path, save_kwargs: dict[str, Any], dtype: torch.dtype) -> Path:
    torch.manual_seed(0)
    model = SWRN(16, 1, 3, num_classes=10, in_channels=1).to(dtype)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0, momentum=0.9)
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    optimizer.step()
    payload = {
        "epoch": 3,
        "arch": "swrn",
        "state_dict": {f"module.{k}": v for k, v in model.state_dict().items()},
        "optimizer": optimizer.state_dict(),
    }
    path = tmp_path / "authors.pth.tar"
    torch.save(payload, path, **save_kwargs)
    return path


@pytest.mark.parametrize("name", SAMPLE_FILES)
def test_samples_analyse_identically_without_torch(name: str, monkeypatch: Any) -> None:
    path = SAMPLES / name
    ckpt = load_checkpoint(path, arrays=True)
    assert all(isinstance(t, StoredArray) for t in ckpt.state_dict.values())
    for options in (
        AnalysisOptions(),
        AnalysisOptions(0.9, Metric.WEIGHT, Linkage.AVERAGE, signed=True),
    ):
        mapped = analysis_json(path, options, monkeypatch, arrays=True)
        assert mapped == analysis_json(path, options, monkeypatch, arrays=False)


@pytest.mark.parametrize("save_kwargs", FORMATS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.float64])
def test_authors_layout_values_and_sharing(
    tmp_path: Path, save_kwargs: dict[str, Any], dtype: torch.dtype
) -> None:
    path = authors_like(tmp_path, save_kwargs, dtype)
    mapped, loaded = load_checkpoint(path, arrays=True), load_checkpoint(path)
    assert (mapped.container, mapped.stripped_prefix) == ("authors-training", "module.")
    assert list(mapped.state_dict) == list(loaded.state_dict)
    for key, tensor in loaded.state_dict.items():
        array = mapped.state_dict[key]
        assert isinstance(array, StoredArray) and not array.flags.writeable
        assert array.shape == tuple(tensor.shape)
        np.testing.assert_array_equal(array, tensor.numpy())
    # one bank under many keys is one storage on both paths
    assert count_state_dict_parameters(mapped.state_dict) == count_state_dict_parameters(
        loaded.state_dict
    )
    momentum = mapped.extras["optimizer"]["state"][0]["momentum_buffer"]
    assert isinstance(momentum, StoredArray)


@pytest.mark.parametrize("save_kwargs", FORMATS)
def test_views_offsets_and_strides(tmp_path: Path, save_kwargs: dict[str, Any]) -> None:
    base = torch.arange(60, dtype=torch.float32).reshape(3, 4, 5)
    state = {
        "whole": base,
        "slice": base[1:],
        "transposed": base.transpose(0, 2),
        "column": base[:, 2, 3],
        "empty": base[:0],
        "int": torch.arange(7),
        "flag": torch.tensor([True, False]),
    }
    path = tmp_path / "views.pt"
    torch.save(state, path, **save_kwargs)
    mapped = load_checkpoint(path, arrays=True).state_dict
    for key, tensor in state.items():
        np.testing.assert_array_equal(mapped[key], tensor.numpy())
    assert count_state_dict_parameters(mapped) == count_state_dict_parameters(
        load_checkpoint(path).state_dict
    )


def test_what_the_reader_does_not_model_goes_to_torch(tmp_path: Path) -> None:
    path = tmp_path / "bf16.pt"
    torch.save({"w": torch.ones(3, dtype=torch.bfloat16), "b": torch.zeros(2)}, path)
    ckpt = load_checkpoint(path, arrays=True)
    assert all(isinstance(t, torch.Tensor) for t in ckpt.state_dict.values())
    assert ckpt.state_dict["w"].dtype == torch.bfloat16


@pytest.mark.parametrize("save_kwargs", FORMATS)
def test_refusals_and_errors_are_torchs_words(tmp_path: Path, save_kwargs: dict[str, Any]) -> None:
    hostile = tmp_path / "hostile.pt"

    class Payload:
        def __reduce__(self) -> Any:
            return os.system, ("true",)

    torch.save({"w": torch.zeros(2), "x": Payload()}, hostile, **save_kwargs)
    messages = []
    for arrays in (True, False):
        with pytest.raises(UnsafeCheckpointError) as caught:
            load_checkpoint(hostile, arrays=arrays)
        messages.append(str(caught.value))
    assert messages[0] == messages[1] and "posix.system" in messages[0]

    good = tmp_path / "good.pt"
    torch.save({"w": torch.zeros(1000)}, good, **save_kwargs)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size - 1500])
    messages = []
    for arrays in (True, False):
        with pytest.raises(CheckpointError) as failed:
            load_checkpoint(truncated, arrays=arrays)
        messages.append(str(failed.value))
    assert messages[0] == messages[1]


def test_compressed_zip_members_fall_back(tmp_path: Path) -> None:
    stored = tmp_path / "stored.pt"
    torch.save({"w": torch.arange(10.0)}, stored)
    deflated = tmp_path / "deflated.pt"
    with zipfile.ZipFile(stored) as src, zipfile.ZipFile(deflated, "w") as dst:
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info), compress_type=zipfile.ZIP_DEFLATED)
    ckpt = load_checkpoint(deflated, arrays=True)
    assert isinstance(ckpt.state_dict["w"], torch.Tensor)


def test_non_finite_templates_are_reported_from_the_mapped_file(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = SWRN(16, 1, 2, in_channels=1)
    state = model.state_dict()
    with torch.no_grad():
        state["bank_2.templates"][1, 0, 0, 0, 0] = float("inf")
    path = tmp_path / "inf.pt"
    kwargs = {"depth": 16, "width": 1, "num_templates": 2, "in_channels": 1}
    save_checkpoint(path, arch="swrn", arch_kwargs=kwargs, state_dict=state, metadata={})
    issues = analyze_checkpoint(path).issues
    assert [(i.kind, i.key) for i in issues] == [("non-finite", "bank_2.templates")]


def test_ssc_analyze_never_imports_torch_or_scikit_learn() -> None:
    # The point of the reader: `ssc analyze` costs a fraction of `import torch`.
    sample = str(SAMPLES / "authors_swrn28-1-4_digits_align.pth.tar")
    code = (
        "import sys\n"
        "from soft_share_cli.cli import main\n"
        f"try: main(['analyze', '--json', {sample!r}])\n"
        "except SystemExit as e: assert e.code in (0, None), e.code\n"
        "heavy = {'torch', 'sklearn', 'scipy', 'matplotlib'}\n"
        "print(sorted(heavy & set(sys.modules)), file=sys.stderr)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout)["params"]["checkpoint_unique"] == 272_514
    assert out.stderr.strip().splitlines()[-1] == "[]"


def test_the_reader_models_only_what_torchs_loader_allows() -> None:
    # So a verdict reached without torch is the verdict torch's list would give.
    from soft_share_cli.checkpoints import policy
    from soft_share_cli.checkpoints.tensor_records import MODELLED_GLOBALS

    numpy_names = {name for _, name in policy.numpy_safe_globals()}
    assert MODELLED_GLOBALS.issubset(policy.torch_allowed_names() | numpy_names)


@pytest.mark.parametrize("protocol", [1, 4])
def test_pickle_protocols_torch_cannot_read_fail_alike(tmp_path: Path, protocol: int) -> None:
    path = tmp_path / f"protocol{protocol}.pt"
    torch.save({"w": torch.zeros(3)}, path, pickle_protocol=protocol)
    outcomes = []
    for arrays in (True, False):
        try:
            load_checkpoint(path, arrays=arrays)
            outcomes.append("loaded")
        except CheckpointError as exc:
            outcomes.append(str(exc))
    assert outcomes[0] == outcomes[1]


def test_a_pickle_cannot_edit_the_readers_functions(tmp_path: Path) -> None:
    # BUILD on a global the reader hands out must fail (and leave the file to torch's loader),
    # never change that global for the next file.
    from soft_share_cli.checkpoints import mapped as _mapped
    from soft_share_cli.checkpoints import tensor_records

    before = tensor_records._rebuild_tensor_v2.__defaults__
    # GLOBAL torch._utils._rebuild_tensor_v2, then BUILD it with a (dict, slots) state.
    body = (
        b"\x80\x02ctorch._utils\n_rebuild_tensor_v2\nq\x00N}q\x01X\x0c\x00\x00\x00__defaults__"
        b"q\x02)s\x86q\x03b."
    )
    path = tmp_path / "edit.pt"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("edit/data.pkl", body)
        archive.writestr("edit/byteorder", "little")
    assert _mapped.read_arrays(path, "zip", ()) is None
    assert tensor_records._rebuild_tensor_v2.__defaults__ == before
    with pytest.raises((CheckpointError, UnsafeCheckpointError)):
        load_checkpoint(path, arrays=True)
