"""benchmarks/bench.py --quick: every fast path agrees with its baseline. Speed is not asserted."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_quick_bench_agrees(tmp_path):
    out = tmp_path / "bench.json"
    subprocess.run([sys.executable, "benchmarks/bench.py", "--quick", "--device", "cpu", "--out", str(out)],
                   cwd=ROOT, check=True, capture_output=True, timeout=600)
    checks = json.loads(out.read_text())["checks"]

    kcenter = checks["k-center greedy"]
    assert kcenter["same_position"] == kcenter["k"], kcenter
    assert checks["latent extraction"]["relative_difference"] < 1e-5
    assert checks["descriptor targets"]["relative_difference"] < 1e-5
    assert checks["encoder training"]["ok"], checks["encoder training"]
    assert checks["gather for backward"]["ok"], checks["gather for backward"]

    heads = checks["sampling grid"]
    assert heads["float64"]["prediction_relative_difference"] < 1e-9, heads
    assert heads["float64"]["same_best_epoch"] == heads["float64"]["heads"], heads
    assert heads["float32"]["prediction_relative_difference"] < 1e-2, heads  # rounding drift over the epochs


def test_kmeans_bench_compares_objectives_on_the_same_pool(tmp_path):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import bench_kmeans

    report = bench_kmeans.main(["--pool", "3000", "--ns", "5", "40", "--seeds", "0", "1", "2", "--implementations",
                                "torch", "sklearn", "--out", str(tmp_path / "kmeans.json")])
    assert len(report["rows"]) == 12
    for k in (5, 40):  # the same algorithm (greedy k-means++, then Lloyd): mean objectives within 10%
        mean = {name: np.mean([row["objective"] for row in report["rows"] if (row["implementation"], row["k"]) ==
                               (name, k)]) for name in ("torch", "sklearn")}
        assert abs(mean["torch"] / mean["sklearn"] - 1) < 0.1, mean
    assert json.loads((tmp_path / "kmeans.json").read_text())["grid"] == report["grid"]


def test_objectives_bench_times_every_variant(qm9_root):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import bench_objectives

    rates = bench_objectives.main(["--molecules", "40", "--repeats", "1", "--data-root", str(qm9_root)])
    assert list(rates) == list(bench_objectives.VARIANTS) and all(rate > 0 for rate in rates.values())


def test_pretrained_bench_paths_agree(qm9_root, tmp_path):
    pytest.importorskip("sevenn", reason="optional: pip install -r requirements-pretrained.txt")
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import bench_pretrained

    rates, differences = bench_pretrained.main(["--molecules", "40", "--repeats", "1", "--batch-sizes", "4", "16",
                                                "--data-root", str(qm9_root), "--out", str(tmp_path / "bench.json")])
    assert json.loads((tmp_path / "bench.json").read_text())["mol_per_s"] == rates
    assert len(rates) == 3 and all(rate > 0 for rate in rates.values())
    assert max(differences.values()) < 1e-5, differences  # the same graphs, edge vectors rounded alike or not


def results_csv(folder, mae_by_strategy):
    """A results_all.csv of one head, N = 10, seeds 0-2: MAE per strategy and seed, largest error 2x MAE."""
    import pandas as pd
    rows = [{"head": "krr", "strategy": strategy, "n_labels": 10, "seed": seed, "mae": mae, "max_abs_error": 2 * mae}
            for strategy, maes in mae_by_strategy.items() for seed, mae in enumerate(maes)]
    folder.mkdir()
    pd.DataFrame(rows).to_csv(folder / "results_all.csv", index=False)
    return str(folder)


def test_paired_runs_pairs_by_seed_and_refuses_heads_that_changed(tmp_path, capsys):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import paired_runs

    a = results_csv(tmp_path / "a", {"random": [0.5, 0.6, 0.7], "kmeans": [0.4, 0.5, 0.6]})
    b = results_csv(tmp_path / "b", {"random": [0.5, 0.6, 0.7], "kmeans": [0.5, 0.5, 0.9]})
    paired_runs.main([a, b])
    row = capsys.readouterr().out.splitlines()[2].split(" | ")
    assert row[1:8] == ["kmeans", "10", "3", "500", "633", "133", "88.2"]  # B - A per seed: 100, 0, 300 meV
    c = results_csv(tmp_path / "c", {"random": [0.5, 0.6, 0.8], "kmeans": [0.4, 0.5, 0.6]})
    with pytest.raises(SystemExit, match="random differs between the runs, so the heads changed too"):
        paired_runs.main([a, c])
