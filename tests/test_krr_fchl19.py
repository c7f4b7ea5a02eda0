"""benchmarks/krr_fchl19.py: the FCHL19 kernel ridge reference, on a 300-molecule QM9 subset. The tests
that compute FCHL19 features need qmllib and are skipped without it; the package does not need it."""
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import data
import sampling_mlp_experiment as sm
import selection
import utils

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import cli  # noqa: E402
import krr_fchl19 as krr  # noqa: E402
import latents  # noqa: E402

COLUMNS = ["head", "strategy", "n_labels", "seed", "mae", "rmse", "r2", "p95_abs_error", "max_abs_error",
           "fit_seconds", "val_mae", "fchl_sigma", "fchl_ridge"]


@pytest.fixture(scope="module")
def small_npz(qm9_arrays, tmp_path_factory):
    """A latents npz of 300 QM9 molecules, split as train_encoder_qm9 splits them, with random latents."""
    molecules = data.seeded_subset(qm9_arrays, 300, 0)
    idx_train, idx_val, idx_test = utils.train_val_test_split_indices(300, (0.8, 0.1, 0.1), 0)
    path = tmp_path_factory.mktemp("krr") / "latents_qm9.npz"
    np.savez(path, z_all=np.random.default_rng(0).normal(size=(300, 4)).astype(np.float32),
             y_all=molecules["homo_ev"], idx_train=idx_train, idx_val=idx_val, idx_test=idx_test,
             structure_index=molecules["index"])
    return path


def test_picks_are_the_sampling_scripts_random_picks(small_npz, tmp_path):
    arrays = latents.load_latents(small_npz)
    cfg = cli.resolve_config({"SAMPLING_SEEDS": [0, 1, 2]})
    selector = selection.Selector(selection.selection_latents(arrays, cfg, torch.device("cpu")), cfg)
    plan = [("random", seed) for seed in cfg.SAMPLING_SEEDS]
    theirs = sm.select_all(selector, None, plan, [10, 40], arrays["idx_train"], tmp_path, utils.get_logger("test_krr"))
    for seed in cfg.SAMPLING_SEEDS:
        mine = krr.random_picks(len(arrays["idx_train"]), 40, seed)
        for n in (10, 40):
            assert np.array_equal(mine[:n], theirs["random", seed, n].numpy())


def test_validation_rows_are_the_sampling_scripts(small_npz):
    arrays = latents.load_latents(small_npz)
    cfg = cli.resolve_config({"MLP_VAL_SIZE": 20})
    val_labels = sm.experiment_inputs(arrays, cfg, torch.device("cpu"))["val"][1]
    rows = krr.validation_rows(arrays, cfg)
    assert torch.equal(val_labels, torch.as_tensor(arrays["y_all"][rows], dtype=torch.float32))


def test_molecules_missing_from_the_cache_are_an_input_error(qm9_arrays):
    with pytest.raises(utils.InputError, match=r"the QM9 cache lacks 1 molecules of the npz, e.g. QM9 Index \[0\]"):
        krr.cache_rows(qm9_arrays, np.array([qm9_arrays["index"][5], 0]))
    assert krr.cache_rows(qm9_arrays, qm9_arrays["index"][[7, 3]]).tolist() == [7, 3]


def test_fit_krr_solves_the_ridge_system_of_the_best_pair():
    generator = torch.Generator().manual_seed(0)
    x, x_val = (torch.randn(n, 3, generator=generator, dtype=torch.float64) for n in (30, 50))
    y = torch.sin(x[:, 0]) + 0.3 * torch.randn(30, generator=generator, dtype=torch.float64)
    kernels = [torch.stack([torch.exp(-torch.cdist(a, x) ** 2 / (2 * sigma**2)) for sigma in krr.SIGMAS])
               for a in (x, x_val)]
    fit = krr.fit_krr(*kernels, y, torch.sin(x_val[:, 0]))
    val_maes = {}
    for s, sigma in enumerate(krr.SIGMAS):
        for ridge in krr.RIDGES:
            alpha = torch.linalg.solve(kernels[0][s] + ridge * torch.eye(30, dtype=torch.float64), y)
            val_maes[sigma, ridge] = float((kernels[1][s] @ alpha - torch.sin(x_val[:, 0])).abs().mean())
            if (sigma, ridge) == (fit["sigma"], fit["ridge"]):
                torch.testing.assert_close(fit["alpha"], alpha, rtol=1e-6, atol=1e-6)
    assert fit["val_mae"] == pytest.approx(val_maes[fit["sigma"], fit["ridge"]], rel=1e-6)
    assert fit["val_mae"] <= min(val_maes.values()) * (1 + 1e-6)


def test_without_qmllib_the_script_says_so_in_one_line(monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(sys.modules, "qmllib", None)  # an import of a module set to None raises ImportError
    monkeypatch.setitem(sys.modules, "qmllib.representations", None)
    with pytest.raises(SystemExit) as exit_info:
        cli.run_cli(lambda: krr.main(["--latents", str(tmp_path / "latents_qm9.npz"), "--out-dir",
                                        str(tmp_path / "out")]))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and "pip install qmllib" in err, err
    assert not (tmp_path / "out").exists()


def padded_features(molecules, generate):
    """qmllib's input for its kernels: features (M, 29, D) padded to QM9's largest molecule, and charges."""
    first = np.cumsum(molecules["n_atoms"]) - molecules["n_atoms"]
    charges = [molecules["z"][a:a + n].astype(np.int64) for a, n in zip(first, molecules["n_atoms"])]
    features = [generate(z, molecules["pos"][a:a + len(z)].astype(np.float64), elements=list(krr.ELEMENTS), pad=29)
                for z, a in zip(charges, first)]
    return np.array(features), charges


def test_local_kernels_equal_qmllibs_get_local_kernel(qm9_arrays, monkeypatch):
    pytest.importorskip("qmllib")
    from qmllib.kernels import get_local_kernel
    from qmllib.representations import generate_fchl19

    monkeypatch.setattr(krr, "BLOCK", 3)  # several blocks, one of them partial
    rows_a, rows_b = np.arange(0, 8), np.arange(100, 160, 6)  # the first QM9 molecules lack N, O or F
    mine = krr.local_kernels(krr.environments(qm9_arrays, rows_a, "cpu"), krr.environments(qm9_arrays, rows_b, "cpu"),
                             [1.0, 8.0])
    (x_a, q_a), (x_b, q_b) = (padded_features(data.take_structures(qm9_arrays, rows), generate_fchl19)
                              for rows in (rows_a, rows_b))
    for s, sigma in enumerate([1.0, 8.0]):
        theirs = get_local_kernel(x_a, x_b, q_a, q_b, sigma).T  # qmllib's is (molecules of b, molecules of a)
        np.testing.assert_allclose(mine[s].numpy(), theirs, rtol=1e-10)


def test_small_run_writes_the_sampling_scripts_formats(small_npz, qm9_root, tmp_path):
    pytest.importorskip("qmllib")
    out = tmp_path / "krr"
    krr.main(["--latents", str(small_npz), "--data-root", str(qm9_root), "--out-dir", str(out), "--set",
              "SAMPLING_NS=[10, 40]", "--set", "SAMPLING_SEEDS=[0, 1]", "--set", "MLP_VAL_SIZE=20"])
    results = pd.read_csv(out / "results_all.csv")
    assert list(results.columns) == COLUMNS
    assert sorted(zip(results["n_labels"], results["seed"])) == [(10, 0), (10, 1), (40, 0), (40, 1)]
    assert set(results["head"]) == {"fchl19_krr"} and set(results["strategy"]) == {"random"}
    assert results["fchl_sigma"].isin(krr.SIGMAS).all() and results["fchl_ridge"].isin(krr.RIDGES).all()
    assert np.isfinite(results[["mae", "rmse", "r2", "val_mae"]].to_numpy()).all()
    curves = sm.load_reference(out / "summary.csv")
    ns, mae_means, p95_means = curves["fchl19_krr", "random"]
    assert ns.tolist() == [10, 40] and len(mae_means) == len(p95_means) == 2
    assert (out / "config.json").is_file() and "seed 1: test kernel" in (out / "krr_fchl19.log").read_text()
