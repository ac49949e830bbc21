"""``ssc analyze`` on a traced fold (a user network folded through ``--model``): the file seen as
soft-shared, with a layer given a fixed weight of its own shown as a plain layer."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STORE = ROOT / "sample_checkpoints" / "sharing" / "store.pt"
FACTORY = str(ROOT / "examples" / "sharing.py") + ":store"


def test_a_folded_store_is_analysed_without_warnings(ssc, tmp_path: Path) -> None:
    out = tmp_path / "store_folded.safetensors"
    fold = ssc("fold", str(STORE), "--model", FACTORY, "-o", str(out), "--json")
    assert fold.code == 0, fold.err
    analysis = ssc("analyze", str(out), "--json")
    assert analysis.code == 0, analysis.err
    report = analysis.json()
    assert not report["issues"]  # the head's own weight is not a layer of the store's bank
    (bank,) = report["banks"]
    assert bank["distinct_weights"] == {"before": 4, "after": 2}  # 4 layers, 2 stored weights
    stored = ssc("info", str(out), "--json").json()["unique_parameters"]
    assert report["params"]["checkpoint_unique"] == stored == fold.json()["params"]["folded"]
