"""The benchmark script runs end to end in quick mode and writes well-formed results.

Timings are not asserted (they belong to BENCHMARKS.md, measured side by side); this checks that
``python benchmarks/run.py`` keeps working and that what it writes has the documented shape.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_quick_benchmark_writes_json_markdown_and_plot(tmp_path: Path) -> None:
    results, markdown = tmp_path / "results", tmp_path / "BENCHMARKS.md"
    run = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "run.py"), "--quick",
         "--results", str(results), "--markdown", str(markdown)],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads((results / "latest.json").read_text())
    assert report["schema_version"] == 1 and report["quick"] is True
    assert {"cpu", "cores", "torch", "python"} <= report["machine"].keys()
    for name in (
        "import_torch",
        "ssc_help",
        "ssc_version",
        "naive_load_zip",
        "analyze_zip",
        "naive_load_legacy",
        "analyze_legacy",
        "fold_zip",
        "ssc_eval",
        "bare_eval",
    ):
        measured = report["measurements"][name]
        assert measured["median_wall_s"] > 0 and measured["median_maxrss_mb"] > 0
    ids = {t["id"] for t in report["targets"]}
    assert {"1-help", "1-version", "2-zip-time", "2-zip-memory", "2-legacy-time",
            "2-legacy-memory", "3-batch64", "3-batch1", "3-predictions", "4-eval",
            "5-fold"} <= ids  # fmt: skip
    assert all(isinstance(t["met"], bool) and t["goal"][0] in "≤≥" for t in report["targets"])
    assert report["inference"]["identical_predictions"] is True  # an exact fold, at any size
    assert {row["axis"] for row in report["scaling"]["rows"]} == {"depth", "K"}
    assert (results / "scaling.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = markdown.read_text()
    assert text.startswith("# Benchmarks") and "| target | ssc | baseline |" in text
    assert "scaling.png" in text and "quick mode" in text
    # the table printed on stdout is the one in the Markdown
    assert run.stdout.strip().splitlines()[0] == "| target | ssc | baseline | ratio | goal | met |"
