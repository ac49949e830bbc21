"""benchmarks/algorithmic.py: its quick mode runs end to end, its loops follow the rule fixed in
advance, its cells are what an independent evaluation of the kept networks gives, and its
comparison tells noise from a change."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def bench() -> Any:
    script = ROOT / "benchmarks" / "algorithmic.py"
    spec = importlib.util.spec_from_file_location("algorithmic_benchmark", script)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    yield module
    del sys.modules[spec.name]


@pytest.fixture(scope="module")
def quick(bench: Any, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Path]:
    import torch

    out = tmp_path_factory.mktemp("bench")
    threads = torch.get_num_threads()
    bench.main(["--quick", "--out", str(out), "--jobs", "1", "--keep", str(out / "nets")])
    assert torch.get_num_threads() == threads  # main restores what it changed
    return json.loads((out / "algorithmic_quick.json").read_text()), out


def test_every_network_of_every_task_and_seed_is_measured(bench: Any, quick) -> None:
    results, out = quick
    setup = bench.QUICK
    assert len(results["runs"]) == setup.seeds * len(setup.tasks) * len(bench.NETWORKS)
    for task in setup.tasks:
        rows = results["summary"][task.kind]
        assert set(rows) == set(bench.ROWS)
        for key in bench.ROWS:
            for stat in rows[key]["exact"]:  # a median of the seeds' values, within their range
                assert len(stat["values"]) == setup.seeds
                assert stat["min"] <= stat["median"] <= stat["max"]
        # the parameter-matched baseline really is about the shared network's size
        shared, small = rows["shared"]["parameters"], rows["small"]["parameters"]
        assert abs(small - shared) < abs(rows["plain"]["parameters"] - shared)
    md = (out / "algorithmic_quick.md").read_text()
    assert "| plain FCN, same depth |" in md and "*chosen on the test set*" in md
    assert "| RFCN, projection block, + progressive loss |" in md and "prefix-sums" in md
    assert (out / "algorithmic_quick.png").stat().st_size > 0


def test_loops_run_the_rule_fixed_in_advance_and_auto_stays_under_its_cap(bench, quick) -> None:
    results, _ = quick
    for r in results["runs"]:
        if r["network"] not in bench.LOOPS:
            assert "auto" not in r
            continue
        task = next(t for t in bench.QUICK.tasks if t.kind == r["task"])
        trained = r["trained_iterations"]
        assert trained == task.blocks
        assert r["iterations"] == [round(trained * f) for f in task.factors]
        for n, auto, sweep in zip(r["iterations"], r["auto"], r["sweeps"], strict=True):
            assert 1 <= auto["mean_iterations"] <= 2 * n  # capped at twice the rule's count
            counts = [p["iterations"] for p in sweep]
            assert n in counts and max(counts) == 2 * n


def test_the_cells_are_what_the_kept_networks_give(bench: Any, quick) -> None:
    """Re-evaluate the kept networks independently, through the CLI's library calls."""
    from soft_share_cli.pipeline.eval import run_eval

    results, out = quick
    task = bench.QUICK.tasks[0]  # prefix sums
    for network in ("plain", "looped", "recurrent"):
        run = next(r for r in results["runs"] if r["task"] == task.kind and r["network"] == network)
        suffix = ".safetensors" if network == "looped" else ".pt"
        path = out / "nets" / f"{task.kind}_{run['seed']}_{network}{suffix}"
        size, count = task.sizes[1], task.test_counts()[1]
        spec = task.spec(size, count, run["seed"])
        iterations = run["iterations"][1] if network != "plain" else None
        again = run_eval(path, spec, iterations=iterations).result.exact
        assert again == pytest.approx(run["exact"][1])


def test_compare_tells_noise_from_a_change(bench: Any, quick) -> None:
    results, _ = quick
    lines, within, total = bench.compare(results, results)
    assert within == total == len(lines) > 0
    moved = json.loads(json.dumps(results))
    for stat in moved["summary"]["maze"]["plain"]["exact"]:
        stat.update(median=stat["max"] + 50, min=stat["max"] + 40, max=stat["max"] + 60)
    lines, within, total = bench.compare(results, moved)
    maze = next(t for t in bench.QUICK.tasks if t.kind == "maze")
    assert total - within == len(maze.factors)
    assert sum(line.split()[:3] == ["OUTSIDE", "maze", "plain"] for line in lines) == 2


def test_an_earlier_json_redraws_to_the_same_table(bench: Any, quick, tmp_path: Path) -> None:
    results, out = quick
    copy = tmp_path / "again.json"
    copy.write_text(json.dumps(results))
    bench.main(["--from-json", str(copy)])
    assert (tmp_path / "again.md").read_text() == (out / "algorithmic_quick.md").read_text()


def test_a_redraw_writes_where_told_and_refuses_what_is_not_a_run(bench, quick, tmp_path) -> None:
    results, out = quick
    source = tmp_path / "run.json"
    source.write_text(json.dumps(results))
    bench.main(["--from-json", str(source), "--out", str(tmp_path / "elsewhere")])
    assert (tmp_path / "elsewhere" / "run.md").exists() and not (tmp_path / "run.md").exists()
    for bad in (tmp_path / "missing.json", out / "algorithmic_quick.md"):
        with pytest.raises(SystemExit) as exit_info:
            bench.main(["--from-json", str(bad)])
        assert exit_info.value.code == 2
