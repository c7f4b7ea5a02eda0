"""The property heads, the statistics, the experiment script end to end and selection-only runs."""
import re
import resource
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats
from scipy.spatial.distance import cdist, pdist

import evaluation
import heads
import latents
import plots
import sampling_mlp_experiment as sm
import selection
import utils
from cli import resolve_config
from conftest import ROOT, expect_input_error, write_synthetic_latents

# --- heads ----------------------------------------------------------------------------

def head_data(num_heads, n, dim=6, seed=0, dtype=torch.float64):
    """Noisy labels, so that heads overfit and stop early: x (H, n, dim), y (H, n), x_val (80, dim), y_val (H, 80)."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(num_heads, n, dim, generator=generator, dtype=dtype)
    y = torch.sin(x[..., 0]) + 0.3 * x[..., 1] + 0.5 * torch.randn(num_heads, n, generator=generator, dtype=dtype)
    x_val = torch.randn(80, dim, generator=generator, dtype=dtype)
    y_val = (torch.sin(x_val[:, 0]) + 0.3 * x_val[:, 1]).expand(num_heads, -1)
    return x, y, x_val, y_val


SMALL_HEADS = {"MLP_HIDDEN_DIM": 32, "MLP_LAYERS": 2, "MLP_EPOCHS": 40, "MLP_BATCH_SIZE": 16, "MLP_PATIENCE": 5}


@pytest.mark.parametrize("patience", [1, 5])
def test_batched_heads_equal_heads_trained_one_by_one(patience):
    cfg = resolve_config({**SMALL_HEADS, "MLP_PATIENCE": patience})
    seeds = [0, 1, 2]
    x, y, x_val, y_val = head_data(3, 40)
    best, best_epoch, best_mae, stack = heads.train_mlp_heads(x, y, x_val, y_val, seeds, cfg)
    batched = stack.shared(best, x_val)
    for h, seed in enumerate(seeds):
        model, epoch = heads.train_mlp(heads.new_head(seed, 6, cfg).double(), x[h], y[h], x_val, y_val[h], cfg, seed)
        assert epoch == int(best_epoch[h])
        with torch.no_grad():
            torch.testing.assert_close(batched[h], model(x_val), rtol=1e-9, atol=1e-9)
            assert float(best_mae[h]) == pytest.approx(float((model(x_val) - y_val[h]).abs().mean()), rel=1e-9)
    assert len(set(best_epoch.tolist())) > 1  # heads stopped at different epochs


def test_early_stopping_restores_the_best_validation_weights(monkeypatch):
    cfg = resolve_config({**SMALL_HEADS, "MLP_PATIENCE": 3})
    x, y, x_val, _ = head_data(1, 40)
    y_val = -(torch.sin(x_val[:, 0]) + 0.3 * x_val[:, 1])  # fitting the training set only hurts here
    epochs_run = []
    draw = heads.epoch_batches
    monkeypatch.setattr(heads, "epoch_batches", lambda *args: epochs_run.append(1) or draw(*args))
    model, best_epoch = heads.train_mlp(heads.new_head(0, 6, cfg).double(), x[0], y[0], x_val, y_val, cfg, seed=0)
    assert len(epochs_run) == best_epoch + cfg.MLP_PATIENCE < cfg.MLP_EPOCHS  # it stopped, patience epochs on
    best_only = resolve_config({**SMALL_HEADS, "MLP_EPOCHS": best_epoch})
    reference, _ = heads.train_mlp(heads.new_head(0, 6, cfg).double(), x[0], y[0], x_val, y_val, best_only, seed=0)
    for name, tensor in reference.state_dict().items():
        torch.testing.assert_close(model.state_dict()[name], tensor, rtol=0, atol=0)


def test_kernel_ridge_head_equals_the_closed_form_solve():
    generator = torch.Generator().manual_seed(0)
    x, x_val = torch.randn(30, 3, generator=generator), torch.randn(40, 3, generator=generator)
    y, y_val = torch.sin(x[:, 0]) + 0.1 * torch.randn(30, generator=generator), torch.sin(x_val[:, 0])
    model = heads.krr_fit(x, y, x_val, y_val, widths=[0.7], ridges=[0.05])
    x, y = x.double(), y.double()
    median = np.median(pdist(x.numpy()))
    gamma = 1 / (2 * (0.7 * median) ** 2)
    kernel = np.exp(-gamma * cdist(x.numpy(), x.numpy()) ** 2)
    alpha = np.linalg.solve(kernel + 0.05 * np.eye(30), y.numpy())
    np.testing.assert_allclose(model["alpha"].numpy(), alpha, rtol=1e-8, atol=1e-10)
    expected = np.exp(-gamma * cdist(x_val.double().numpy(), x.numpy()) ** 2) @ alpha
    np.testing.assert_allclose(heads.krr_predict(model, x_val).numpy(), expected, rtol=1e-8, atol=1e-10)


def test_kernel_ridge_keeps_the_width_and_ridge_with_the_lowest_validation_mae():
    generator = torch.Generator().manual_seed(1)
    x, x_val = torch.randn(50, 4, generator=generator), torch.randn(60, 4, generator=generator)
    y, y_val = x[:, 0] ** 2 + 0.3 * torch.randn(50, generator=generator), x_val[:, 0] ** 2
    widths, ridges = [0.2, 1.0, 5.0], [1e-4, 1e-1, 10.0]
    val_mae = {(w, r): float((heads.krr_predict(heads.krr_fit(x, y, x_val, y_val, [w], [r]), x_val) - y_val)
                             .abs().mean())
               for w in widths for r in ridges}
    best = heads.krr_fit(x, y, x_val, y_val, widths, ridges)
    assert (best["width"], best["ridge"]) == min(val_mae, key=val_mae.get)
    assert best["val_mae"] == pytest.approx(min(val_mae.values()))


def test_holm_adjustment_by_hand():
    # sorted: 0.005 x 4 = 0.02, 0.01 x 3 = 0.03, 0.03 x 2 = 0.06, 0.04 x 1 = 0.04 -> raised to 0.06
    adjusted = evaluation.holm([0.01, 0.04, np.nan, 0.03, 0.005])
    np.testing.assert_allclose(adjusted, [0.03, 0.06, np.nan, 0.06, 0.02])
    assert evaluation.holm([0.6, 0.9]).tolist() == [1.0, 1.0]


def test_label_efficiency_interpolates_in_log_log():
    ns, random_mae = np.array([10, 100, 1000]), np.array([0.4, 0.2, 0.1])
    assert evaluation.label_efficiency(ns, random_mae, 0.2) == pytest.approx(100)
    assert evaluation.label_efficiency(ns, random_mae, np.sqrt(0.4 * 0.2)) == pytest.approx(np.sqrt(10 * 100))
    assert np.isnan(evaluation.label_efficiency(ns, random_mae, 0.05))
    assert np.isnan(evaluation.label_efficiency(ns, random_mae, 0.5))


# --- the script ------------------------------------------------------------------------

QUICK = ["--ns", "10", "40", "150", "--seeds", "0", "1", "2", "--set", "MLP_EPOCHS=80", "--set", "MLP_PATIENCE=10",
         "--set", "MLP_HIDDEN_DIM=64"]
STRATEGIES = resolve_config().SAMPLING_STRATEGIES  # the strategies of a default run


@pytest.fixture(scope="module")
def experiment(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sampling")
    npz = write_synthetic_latents(folder / "latents.npz")
    sm.main(["--latents", str(npz), "--out-dir", str(folder / "out"), *QUICK])
    return folder / "out"


def test_every_output_is_written_with_complete_rows(experiment):
    names = {p.name for p in experiment.iterdir()}
    expected = {"config.json", "run_info.json", "sampling.log", "results_random.csv", "results_latent.csv",
                "results_kmeans.csv", "results_typiclust.csv", "results_herding.csv", "results_all.csv", "summary.csv",
                "curve_mae.png", "curve_p95.png", "curve_max.png", "parity.png", "selected_labels.png"}
    expected |= {f"selected_{s}_seed{k}.npy" for s in STRATEGIES for k in range(3)}
    assert names == expected
    results = pd.read_csv(experiment / "results_all.csv")
    assert len(results) == 2 * len(STRATEGIES) * 3 * 3
    metrics = ["head", "strategy", "n_labels", "seed", "mae", "rmse", "r2", "p95_abs_error", "max_abs_error",
               "fit_seconds"]
    assert not results[metrics].isna().any().any()
    assert not results[results["head"] == "mlp"]["best_epoch"].isna().any()
    assert not results[results["head"] == "krr"][["krr_width", "krr_ridge"]].isna().any().any()
    assert (results["max_abs_error"] >= results["p95_abs_error"]).all()
    assert (results["p95_abs_error"] >= results["mae"]).all()
    assert (pd.read_csv(experiment / "results_latent.csv")["strategy"] == "kcenter").all()
    selected = np.load(experiment / "selected_kcenter_seed1.npy")
    assert len(selected) == 150 and len(set(selected)) == 150
    log = (experiment / "sampling.log").read_text()
    assert all(f"stage {stage}" in log for stage in ("selection", "mlp heads", "krr heads", "statistics and outputs"))


def test_heads_beat_the_mean_predictor(experiment, tmp_path):
    results = pd.read_csv(experiment / "results_all.csv")
    with np.load(write_synthetic_latents(tmp_path / "same.npz")) as npz:
        y_train, y_test = npz["y_all"][npz["idx_train"]], npz["y_all"][npz["idx_test"]]
    mean_predictor = np.abs(y_test - y_train.mean()).mean()
    for head, frame in results[results["n_labels"] == 150].groupby("head"):
        assert frame["mae"].max() < 0.6 * mean_predictor, head


def test_summary_equals_a_hand_computation(experiment):
    results = pd.read_csv(experiment / "results_all.csv")
    summary = pd.read_csv(experiment / "summary.csv").set_index(["head", "strategy", "n_labels"])
    for head in ("mlp", "krr"):
        mine = results[results["head"] == head]
        random_curve = mine[mine.strategy == "random"].groupby("n_labels")["mae"].mean()
        p_values = {}
        for strategy in STRATEGIES[1:]:
            for n in (10, 40, 150):
                r = mine[(mine.strategy == "random") & (mine.n_labels == n)].sort_values("seed")["mae"].to_numpy()
                k = mine[(mine.strategy == strategy) & (mine.n_labels == n)].sort_values("seed")["mae"].to_numpy()
                row = summary.loc[(head, strategy, n)]
                assert row["n_seeds"] == 3
                assert row["mae_mean"] == pytest.approx(k.mean())
                assert row["mae_std"] == pytest.approx(np.sqrt(((k - k.mean()) ** 2).sum() / 2))
                diff = k - r
                se = np.sqrt(((diff - diff.mean()) ** 2).sum() / 2) / np.sqrt(3)
                assert row["mae_diff_vs_random"] == pytest.approx(diff.mean())
                assert row["mae_diff_se"] == pytest.approx(se)
                p_values[strategy, n] = 2 * stats.t.sf(abs(diff.mean() / se), df=2)
                assert row["p_value_paired_t"] == pytest.approx(p_values[strategy, n])
                expected_n, relation = evaluation.random_equivalent(random_curve.index.to_numpy(),
                                                                    random_curve.to_numpy(), k.mean())
                assert row["random_n_equivalent"] == pytest.approx(expected_n, nan_ok=True)
                assert row["label_efficiency"] == pytest.approx(expected_n / n, nan_ok=True)
                assert row["label_efficiency_relation"] == relation
        ranked = sorted(p_values, key=p_values.get)  # Holm over this head's 12 comparisons
        m, running = len(ranked), 0.0
        for i, key in enumerate(ranked):
            running = max(running, min(1.0, (m - i) * p_values[key]))
            assert summary.loc[(head, *key), "p_holm"] == pytest.approx(running)
        assert np.isnan(summary.loc[(head, "random", 10), "mae_diff_vs_random"])


def test_same_seed_same_numbers_under_load(experiment, tmp_path, busy_cores):
    """Every number but the measured fit time repeats bit for bit; summary.csv holds no time, so it
    repeats byte for byte."""
    npz = write_synthetic_latents(tmp_path / "latents.npz")
    sm.main(["--latents", str(npz), "--out-dir", str(tmp_path / "again"), *QUICK])
    first = pd.read_csv(experiment / "results_all.csv").drop(columns="fit_seconds")
    again = pd.read_csv(tmp_path / "again" / "results_all.csv").drop(columns="fit_seconds")
    pd.testing.assert_frame_equal(first, again, check_exact=True)
    assert (experiment / "summary.csv").read_bytes() == (tmp_path / "again" / "summary.csv").read_bytes()
    for selected in experiment.glob("selected_*.npy"):
        np.testing.assert_array_equal(np.load(selected), np.load(tmp_path / "again" / selected.name))


SPLIT = {"idx_train": np.arange(420), "idx_val": np.arange(420, 510), "idx_test": np.arange(510, 600)}
FLAT_TEST = np.r_[np.linspace(-7, -6, 510), np.full(90, -6.5)]


def test_reference_curves_come_from_another_runs_summary(experiment, tmp_path):
    reference = sm.load_reference(experiment / "summary.csv")
    assert set(reference) == {(head, s) for head in ("mlp", "krr") for s in STRATEGIES}
    ns, mae_means, p95_means = reference["krr", "typiclust"]
    summary = pd.read_csv(experiment / "summary.csv")
    rows = summary[(summary["head"] == "krr") & (summary["strategy"] == "typiclust")]
    assert ns.tolist() == [10, 40, 150] and mae_means.tolist() == rows["mae_mean"].tolist()
    older = tmp_path / "old_summary.csv"  # a run from before heads had names: MLP heads, no p95
    summary.drop(columns=["head", "p95_abs_error_mean"]).head(3).to_csv(older, index=False)
    assert list(sm.load_reference(older)) == [("mlp", "herding")]
    panels = plots.reference_panels({"old": sm.load_reference(older)}, ["mlp", "krr"], 2)
    assert panels == {plots.HEAD_TITLES["mlp"]: {}, plots.HEAD_TITLES["krr"]: {}}
    classical = tmp_path / "classical" / "summary.csv"  # another model's curve: drawn in every panel
    classical.parent.mkdir()
    summary.assign(head="fchl19_krr").head(2).to_csv(classical, index=False)
    references = sm.load_references([str(experiment / "summary.csv"), f"kernel={classical}"])
    assert list(references) == [experiment.name, "kernel"]
    panels = plots.reference_panels(references, ["krr"], 1)
    assert set(panels[plots.HEAD_TITLES["krr"]]) == {*((experiment.name, plots.CURVE_LABELS[s]) for s in STRATEGIES),
                                                  ("kernel (fchl19_krr)", plots.CURVE_LABELS["herding"])}
    sm.main(["--latents", str(write_synthetic_latents(tmp_path / "latents.npz")), "--out-dir", str(tmp_path / "out"), "--ns",
             "10", "20", "--seeds", "0", "1", "--strategies", "random", "herding", "--heads", "krr", "--reference",
             str(experiment / "summary.csv"), f"kernel={classical}"])
    assert (tmp_path / "out" / "curve_mae.png").exists()


@pytest.mark.parametrize("change, message", [
    (lambda frame: frame.assign(n_labels=frame["n_labels"].astype(str).str.replace("40", "forty")),
     "has n_labels 'forty'; expected a positive integer"),
    (lambda frame: frame.assign(n_labels=frame["n_labels"] + 0.5), "has n_labels '10.5'; expected a positive integer"),
    (lambda frame: frame.assign(mae_mean="low"), "line 2 has mae_mean 'low'; expected a finite, non-negative number"),
    (lambda frame: frame.assign(mae_mean=-frame["mae_mean"]), "has mae_mean '-"),
    (lambda frame: frame.assign(p95_abs_error_mean=np.inf), "has p95_abs_error_mean 'inf'; expected a finite"),
    (lambda frame: frame.assign(strategy=frame["strategy"].where(frame.index > 0)), "line 2 has no strategy; expected one on every line"),
    (lambda frame: pd.concat([frame, frame.tail(1)]), "lists head mlp, strategy typiclust, n_labels 150 twice"),
])
def test_a_reference_summary_with_bad_values_is_named(capsys, tmp_path, experiment, change, message):
    path = tmp_path / "summary.csv"
    change(pd.read_csv(experiment / "summary.csv")).to_csv(path, index=False)
    args = ["--latents", str(write_synthetic_latents(tmp_path / "latents.npz")), "--out-dir", str(tmp_path / "out"),
            "--ns", "10", "--reference", str(path)]
    got = expect_input_error(capsys, sm.main, args)
    assert got.startswith(f"error: {path}: reference summary") and message in got
    assert not (tmp_path / "out").exists()


def test_a_reference_of_random_bytes_is_not_readable(capsys, tmp_path):
    path = tmp_path / "summary.csv"
    path.write_bytes(np.random.default_rng(0).bytes(2000))
    args = ["--latents", str(write_synthetic_latents(tmp_path / "latents.npz")), "--out-dir", str(tmp_path / "out"),
            "--ns", "10", "--reference", str(path)]
    assert f"error: {path}: reference summary" in expect_input_error(capsys, sm.main, args)
    assert not (tmp_path / "out").exists()


def test_a_full_disk_leaves_no_run_folder(tmp_path):
    limit = 100  # bytes: smaller than config.json, the first file a run writes

    def limit_file_size():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    latents_path = write_synthetic_latents(tmp_path / "latents.npz")
    for argv in (["--ns", "10", "--seeds", "0", "--heads", "krr"], ["--select", "random", "--budget", "5"]):
        out = tmp_path / "out"
        done = subprocess.run([sys.executable, str(ROOT / "sampling_mlp_experiment.py"), "--latents", str(latents_path),
                               "--out-dir", str(out), *argv], cwd=ROOT, capture_output=True, text=True, timeout=300,
                              preexec_fn=limit_file_size)
        assert done.returncode == 2, done.stderr[-2000:]
        assert re.fullmatch(rf"error: {out}/config\.json: cannot write \(File too large\); the previous file, if any, "
                            "is unchanged", done.stderr.strip().splitlines()[-1])
        assert not out.exists()


def labelled_file(path, lines):
    path.write_text("\n".join(str(line) for line in lines) + "\n")
    return path


@pytest.mark.parametrize("strategy", selection.STRATEGIES)
def test_selection_only_writes_the_picks_to_label_in_order(strategy, tmp_path):
    latents_path = write_synthetic_latents(tmp_path / "latents.npz")
    with np.load(latents_path) as npz:
        pool, structure_index = npz["idx_train"], npz["structure_index"]
    labelled = structure_index[pool[[3, 50, 7]]]
    sm.main(["--latents", str(latents_path), "--out-dir", str(tmp_path / "pick"), "--select", strategy, "--budget", "12",
             "--labelled", str(labelled_file(tmp_path / "done.txt", labelled)), "--seed", "4"])
    to_label = pd.read_csv(tmp_path / "pick" / "to_label.csv")
    scored = ["score"] if strategy == "gp_variance" else []  # the posterior variance of each pick
    assert list(to_label) == ["rank", "structure_index", "pool_row", "npz_row", *scored]
    assert to_label["rank"].tolist() == list(range(1, 13))
    assert (to_label["npz_row"] == pool[to_label["pool_row"]]).all()
    assert (to_label["structure_index"] == structure_index[to_label["npz_row"]]).all()
    z_pool = selection.selection_latents(latents.load_latents(latents_path), resolve_config(), torch.device("cpu"))
    expected = sm.selection.Selector(z_pool, resolve_config())(strategy, 12, 4, [3, 50, 7])
    assert to_label["pool_row"].tolist() == expected.tolist()
    assert "pool percentile" in (tmp_path / "pick" / "selection.log").read_text()
    # once labelled, the picks are the warm start of the next round
    sm.main(["--latents", str(latents_path), "--out-dir", str(tmp_path / "next"), "--select", strategy, "--budget", "5",
             "--labelled", str(tmp_path / "pick" / "to_label.csv")])
    assert not set(pd.read_csv(tmp_path / "next" / "to_label.csv")["structure_index"]) & set(to_label["structure_index"])


def test_selection_only_passes_the_hybrid_switch_on(tmp_path):
    latents_path = write_synthetic_latents(tmp_path / "latents.npz")
    sm.main(["--latents", str(latents_path), "--out-dir", str(tmp_path / "pick"), "--select", "hybrid", "--budget",
             "12", "--set", "HYBRID_SWITCH=5"])
    z_pool = selection.selection_latents(latents.load_latents(latents_path), resolve_config(), torch.device("cpu"))
    select = selection.Selector(z_pool, resolve_config({"HYBRID_SWITCH": 5}))
    picked = pd.read_csv(tmp_path / "pick" / "to_label.csv")["pool_row"].tolist()
    assert picked == select("hybrid", 12, sm.SELECT_SEED).tolist() != select("typiclust", 12, sm.SELECT_SEED).tolist()


def test_the_experiment_selects_hybrid_anew_for_every_budget(tmp_path):
    """Below the switch, hybrid's picks for N are TypiClust's for N, not the first N of a larger budget's."""
    z = torch.randn(300, 6, generator=torch.Generator().manual_seed(0))
    selector = selection.Selector(z, resolve_config({"HYBRID_SWITCH": 20}))
    pool_rows = np.arange(300) + 1000
    selections = sm.select_all(selector, None, [("hybrid", 1)], [10, 20, 50], pool_rows, tmp_path,
                               utils.get_logger("test_hybrid"))
    for n in (10, 20, 50):
        assert selections["hybrid", 1, n].tolist() == selector("hybrid", n, 1).tolist()
    assert selections["hybrid", 1, 10].tolist() != selections["hybrid", 1, 50][:10].tolist()
    np.testing.assert_array_equal(np.load(tmp_path / "selected_hybrid_seed1.npy"),
                                  pool_rows[selections["hybrid", 1, 50].numpy()])


def test_mlp_heads_fit_only_the_first_mlp_seed_count_seeds(tmp_path):
    npz = write_synthetic_latents(tmp_path / "latents.npz")
    sm.main(["--latents", str(npz), "--out-dir", str(tmp_path / "out"), "--strategies", "random", "kcenter",
             "--ns", "10", "20", "--seeds", "3", "1", "2", "--set", "MLP_SEED_COUNT=2",
             *[f"--set={name}={value}" for name, value in SMALL_HEADS.items()]])
    results = pd.read_csv(tmp_path / "out" / "results_latent.csv")
    seeds = results.groupby("head")["seed"].agg(lambda s: sorted(set(s)))
    assert seeds["mlp"] == [1, 3] and seeds["krr"] == [1, 2, 3]
    summary = pd.read_csv(tmp_path / "out" / "summary.csv").set_index(["head", "strategy", "n_labels"])
    assert summary.loc[("mlp", "kcenter", 20), "n_seeds"] == 2 and summary.loc[("krr", "kcenter", 20), "n_seeds"] == 3


@pytest.mark.parametrize("replace, argv, message", [
    ({}, ["--latents", "nowhere.npz"], "nowhere.npz: latents file not found"),
    ({"y_all": None, "idx_val": None}, [], "missing keys ['y_all', 'idx_val']; expected ['z_all', 'y_all', "
                                            "'idx_train', 'idx_val', 'idx_test']"),
    ({"z_all": np.full((600, 16), np.nan, np.float32)}, [], "z_all has 9600 NaN or infinite values"),
    ({"idx_test": np.array([0, 1, 2])}, [], "idx_test repeats indices or overlaps another split"),
    ({"idx_test": np.array([600])}, [], "idx_test has indices outside 0..599"),
    ({}, ["--ns", "10", "421"], "label budgets [421]: each N must be in 2..420"),
    ({}, ["--ns", "1", "10"], "label budgets [1]: each N must be in 2..420"),
    ({}, ["--strategies", "random", "uncertainty"], "strategies ['uncertainty']: expected one or more of"),
    ({}, ["--heads", "mlp", "gp"], "heads ['gp']: expected one or more of ['mlp', 'krr']"),
    ({}, ["--set", "HEAD=[]"], "HEAD=[]: expected one or more entries"),
    ({}, ["--set", "SAMPLING_NS=[]"], "SAMPLING_NS=[]: expected one or more entries"),
    ({}, ["--set", "KRR_WIDTHS=[]"], "KRR_WIDTHS=[]: expected one or more entries"),
    ({}, ["--set", "KRR_RIDGES=[]"], "KRR_RIDGES=[]: expected one or more entries"),
    ({}, ["--set", "SAMPLING_SEEDS=[]"], "SAMPLING_SEEDS=[]: expected one or more entries"),
    ({}, ["--set", "SAMPLING_STRATEGIES=[]"], "SAMPLING_STRATEGIES=[]: expected one or more entries"),
    ({"z_all": np.zeros((0, 16), np.float32), "y_all": np.zeros(0)}, [], "z_all has no rows; expected one latent per"),
    ({}, ["--strategies", "random", "kcenter", "kcenter"], "one listed twice would count its seeds twice"),
    ({}, ["--set", "SAMPLING_NS=[10, 20.5]"], "SAMPLING_NS=20.5: expected int"),
    ({}, ["--set", "MLP_BATCH_SIZE=0"], "MLP_BATCH_SIZE=0: expected a positive number"),
    ({}, ["--set", "MLP_VAL_SIZE=0"], "MLP_VAL_SIZE=0: expected a positive number"),
    ({}, ["--set", "KRR_RIDGES=[0.1, -1]"], "KRR_RIDGES=-1.0: expected a positive number"),
    ({}, ["--ns", "10", "--device", "tpu9"], "--device 'tpu9': not a torch device"),
    ({}, ["--ns", "10", "--device", "meta"], "--device 'meta': cannot hold data"),
    ({"z_all": np.zeros((600, 0), np.float32)}, [], "z_all has no columns; expected latents of one or more"),
    ({"z_all": np.full((600, 16), 1e30, np.float32)}, [], "z_all reaches 1e+30; expected values below 2.31e+18"),
    ({**SPLIT, "idx_test": np.array([510])}, [], "idx_test holds 1 molecules with 1 distinct labels; R2 needs"),
    ({**SPLIT, "y_all": FLAT_TEST}, [], "idx_test holds 90 molecules with 1 distinct labels"),
    ({}, ["--seeds", "0", str(2**64)], "SAMPLING_SEEDS=18446744073709551616: expected a seed in 0..4294967295"),
    ({}, ["--mlp-lr", "nan"], "MLP_LR=nan: expected a finite number"),
    ({}, ["--mlp-lr", "inf"], "MLP_LR=inf: expected a finite number"),
    ({}, ["--ns", "10", "--reference", "missing_summary.csv"], "missing_summary.csv: reference summary not readable"),
    ({}, ["--select", "uncertainty", "--budget", "5"], "strategy ['uncertainty']: expected one or more of"),
    ({}, ["--select", "kmeans", "--budget", "421"], "--budget 421: expected 1..420"),
    ({}, ["--select", "kmeans"], "--budget None: expected 1..420"),
    ({"structure_index": None}, ["--select", "kmeans", "--budget", "5"], "the latents npz has no structure_index"),
    ({}, ["--select", "random", "--budget", "5", "--seed", str(2**64)],
     "--seed=18446744073709551616: expected a seed in 0..4294967295"),
    ({}, ["--select", "random", "--budget", "5", "--seed", "-1"], "--seed=-1: expected a seed in 0..4294967295"),
    ({}, ["--select", "random", "--budget", "5", "--reference", "summary.csv"],
     "--reference: not used by --select, which trains no heads"),
    ({}, ["--select", "random", "--budget", "5", "--ns", "10", "--heads", "krr", "--mlp-lr", "0.1"],
     "--heads --ns --mlp-lr: not used by --select"),
    ({}, ["--ns", "10", "--budget", "5"], "--budget: used only with --select"),
    ({}, ["--ns", "10", "--labelled", "done.txt", "--seed", "3"], "--labelled --seed: used only with --select"),
    ({}, ["--set", "SELECTION_DIM=17"], "SELECTION_DIM=17: expected None or 1..16, the width of the latents"),
    ({}, ["--select", "kmeans", "--budget", "5", "--set", "SELECTION_DIM=0"],
     "SELECTION_DIM=0: expected a positive number"),
    ({}, ["--select", "hybrid", "--budget", "5", "--set", "HYBRID_SWITCH=0"], "HYBRID_SWITCH=0: expected a positive"),
    ({}, ["--strategies", "hybrid", "--set", "HYBRID_SWITCH=-3"], "HYBRID_SWITCH=-3: expected a positive number"),
    ({}, ["--set", "GP_SCORE='entropy'"], "GP_SCORE='entropy': expected one of ['variance', 'integrated']"),
])
def test_bad_input_exits_with_one_line_before_any_output(capsys, tmp_path, replace, argv, message):
    npz = write_synthetic_latents(tmp_path / "latents.npz", **replace)
    out = tmp_path / "out"
    args = ["--latents", str(npz), "--out-dir", str(out), *argv]
    if argv[:1] == ["--latents"]:
        args = [*argv, "--out-dir", str(out)]
    assert message in expect_input_error(capsys, sm.main, args)
    assert not out.exists()


def test_a_budget_whose_kernel_does_not_fit_in_memory_is_refused_before_any_output(capsys, tmp_path, monkeypatch):
    npz = write_synthetic_latents(tmp_path / "latents.npz")
    monkeypatch.setattr(heads, "free_memory", lambda device: heads.KRR_PEAK_MATRICES * 8 * 400 ** 2)  # N = 400 fits
    argv = ["--latents", str(npz), "--strategies", "random", "--seeds", "0", "--set", "MLP_EPOCHS=3"]
    message = expect_input_error(capsys, sm.main, [*argv, "--ns", "10", "401", "--out-dir", str(tmp_path / "out")])
    assert "N=401: a kernel ridge head needs about 0.0072 GiB (6 N x N float64 matrices) and cpu has 0.0072 GiB free; " \
           "expected a smaller budget, or drop krr from HEAD (--heads mlp)" in message
    assert not (tmp_path / "out").exists()
    sm.main([*argv, "--ns", "10", "400", "--out-dir", str(tmp_path / "fits")])
    sm.main([*argv, "--ns", "10", "401", "--heads", "mlp", "--out-dir", str(tmp_path / "mlp")])
    assert (tmp_path / "fits" / "summary.csv").exists() and (tmp_path / "mlp" / "summary.csv").exists()


def test_not_an_npz_is_named_as_such(capsys, tmp_path):
    np.save(tmp_path / "latents.npy", np.zeros((600, 16), np.float32))
    (tmp_path / "latents.txt").write_text("z_all,y_all\n")
    for name, message in (("latents.npy", "a single .npy array, expected a latents file (.npz archive"),
                          ("latents.txt", "not an npz archive (no zip header); expected a latents file")):
        got = expect_input_error(capsys, sm.main, ["--latents", str(tmp_path / name), "--out-dir", str(tmp_path / "o")])
        assert f"{tmp_path / name}: {message}" in got
    assert not (tmp_path / "o").exists()


def test_split_indices_of_any_integer_type_work(tmp_path):
    uint16_split = {key: rows.astype(np.uint16) for key, rows in SPLIT.items()}
    arrays = latents.load_latents(write_synthetic_latents(tmp_path / "latents.npz", **uint16_split))
    assert all(arrays[key].dtype == np.int64 for key in SPLIT)
    np.testing.assert_array_equal(arrays["idx_test"], SPLIT["idx_test"])
    sm.main(["--latents", str(tmp_path / "latents.npz"), "--out-dir", str(tmp_path / "out"), "--ns", "10",
             "--seeds", "0", "--set", "MLP_EPOCHS=3", "--strategies", "random", "kcenter", "--heads", "mlp"])
    assert len(pd.read_csv(tmp_path / "out" / "results_all.csv")) == 2


def test_heads_that_never_improve_are_an_error_not_a_result(capsys, tmp_path):
    message = expect_input_error(capsys, sm.main, ["--latents", str(write_synthetic_latents(tmp_path / "latents.npz")),
                                                   "--out-dir", str(tmp_path / "out"), "--ns", "10", "--seeds", "0",
                                                   "--mlp-lr", "1e30", "--set", "MLP_EPOCHS=3", "--strategies",
                                                   "random", "kcenter"])
    assert "N=10: the heads of [('random', 0), ('kcenter', 0)] diverged from the first epoch" in message
    assert not list((tmp_path / "out").glob("*.csv"))


def test_a_folder_holding_a_run_is_refused(capsys, tmp_path, experiment):
    before = {p.name: p.read_bytes() for p in experiment.iterdir()}
    message = expect_input_error(capsys, sm.main, ["--latents", str(write_synthetic_latents(tmp_path / "latents.npz")),
                                                   "--out-dir", str(experiment), *QUICK])
    assert f"{experiment}: already holds files of a run; choose another --out-dir" in message
    assert {p.name: p.read_bytes() for p in experiment.iterdir()} == before


@pytest.mark.parametrize("lines, message", [
    (lambda pool: ["structure_index", pool[0], pool[1], pool[0]], "structure index values listed twice: ["),
    (lambda pool: [pool[0], 100000], "1 structure index values are not in the training pool of the npz (0 of them in its "
                                     "validation or test split), e.g. [100000]"),
    (lambda pool: ["rank,pool_row", "1,4"], "expected a structure_index column or one structure index value a line"),
    (lambda pool: [pool[0], "7.5"], "line 2: '7.5' is not a structure index value (an integer)"),
    (lambda pool: ["7.5", pool[0]], "line 1: '7.5' is not a structure index value (an integer)"),
    (lambda pool: ["rank,structure_index", f"1,{pool[0]}", "2"], "line 3 has 1 columns; expected structure_index in "
                                                                  "column 2"),
    (lambda pool: ["rank,structure_index", f"1,{pool[0]}", "2,nan"], "line 3: 'nan' is not a structure index value"),
    (lambda pool: [pool[0], "", f"{pool[1]},{pool[2]}"], "line 3 holds 2 values; expected one structure index value"),
])
def test_bad_labelled_file_exits_with_one_line_before_any_output(capsys, tmp_path, lines, message):
    latents_path = write_synthetic_latents(tmp_path / "latents.npz")
    with np.load(latents_path) as npz:
        pool = npz["structure_index"][npz["idx_train"]].tolist()
    out = tmp_path / "out"
    args = ["--latents", str(latents_path), "--out-dir", str(out), "--select", "typiclust", "--budget", "5", "--labelled",
            str(labelled_file(tmp_path / "done.csv", lines(pool)))]
    assert message in expect_input_error(capsys, sm.main, args)
    assert not out.exists()


def test_labelled_files_with_or_without_a_header_a_byte_order_mark_or_float_values_read_alike(tmp_path):
    arrays = latents.load_latents(write_synthetic_latents(tmp_path / "latents.npz"))
    pool = arrays["structure_index"][arrays["idx_train"]]
    texts = {"bare": f"{pool[4]}\n{pool[9]}\n", "floats": f"{pool[4]}.0\n\n{float(pool[9])}\n",
             "header": f"structure_index\n{pool[4]}\n{pool[9]}\n",
             "csv": f'rank,structure_name,structure_index\n1,"a, b",{pool[4]}\n2,c,{pool[9]}.0\n'}
    for name, text in texts.items():
        for encoding in ("utf-8", "utf-8-sig"):  # the second starts with a byte-order mark, as spreadsheets write
            path = tmp_path / f"{name}.csv"
            path.write_text(text, encoding=encoding)
            assert sm.read_labelled(path, arrays).tolist() == [4, 9], (name, encoding)


def test_labelled_molecules_of_the_test_split_are_named_as_such(capsys, tmp_path):
    latents_path = write_synthetic_latents(tmp_path / "latents.npz")
    with np.load(latents_path) as npz:
        test_index = npz["structure_index"][npz["idx_test"][:2]]
    args = ["--latents", str(latents_path), "--out-dir", str(tmp_path / "out"), "--select", "random", "--budget", "5",
            "--labelled", str(labelled_file(tmp_path / "done.txt", test_index))]
    assert "2 of them in its validation or test split" in expect_input_error(capsys, sm.main, args)


def test_identical_labels_stop_the_run_before_training_and_without_csv(capsys, tmp_path):
    npz = write_synthetic_latents(tmp_path / "latents.npz", y_all=np.r_[np.full(510, -6.5), np.linspace(-7, -6, 90)],
                            **SPLIT)
    out = tmp_path / "out"
    message = expect_input_error(capsys, sm.main, ["--latents", str(npz), "--out-dir", str(out), *QUICK])
    assert "the 10 selected molecules all have the same label" in message
    assert not list(out.glob("*.csv")) and not list(out.glob("*.png"))


def test_a_column_constant_in_the_pool_cannot_blow_up_the_inputs():
    z = torch.randn(200, 4, generator=torch.Generator().manual_seed(0))
    z[:, 3] = 1e-20  # a rare descriptor bin: empty in the pool ...
    z[150, 3] = 36.0  # ... but not for one test molecule
    x = selection.standardized_latents(z, torch.arange(100))
    floor = 0.1 * z[:100].std(dim=0).square().mean().sqrt()
    assert float(x[150, 3]) == pytest.approx(36.0 / float(floor), rel=1e-5)  # hundreds of std, not 1e23
    torch.testing.assert_close(x[:, :3], utils.standardize(z, torch.arange(100))[0][:, :3])  # others as before


def test_latents_files_from_before_the_property_was_named_are_read_as_qm9_homo(tmp_path, capsys):
    old = write_synthetic_latents(tmp_path / "old.npz", structure_index=None, qm9_index=np.arange(1, 601))
    arrays = latents.load_latents(old)
    assert (arrays["dataset"], arrays["target_name"], arrays["target_unit"]) == ("qm9", "homo", "eV")
    np.testing.assert_array_equal(arrays["structure_index"], np.arange(1, 601))
    named = latents.load_latents(write_synthetic_latents(tmp_path / "new.npz", target_name=np.array("LCD"),
                                          target_unit=np.array("Angstrom"), dataset=np.array("coremof")))
    assert (named["dataset"], named["target_name"], named["target_unit"]) == ("coremof", "LCD", "Angstrom")
    older_to_label = tmp_path / "to_label.csv"
    pool = arrays["structure_index"][arrays["idx_train"]]
    older_to_label.write_text(f"rank,qm9_index\n1,{pool[4]}\n2,{pool[9]}\n")
    assert sm.read_labelled(older_to_label, arrays).tolist() == [4, 9]
