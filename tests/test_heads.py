"""Heads tuned on their own labels (HEAD_TUNING="labels"): leave-one-out kernel ridge, cross-validated
MLP epochs, and the end-to-end promise that no label outside the budget reaches a head."""
import json

import numpy as np
import pandas as pd
import pytest
import torch

import heads
import latents
import sampling_mlp_experiment as sm
from cli import resolve_config
from conftest import expect_input_error, write_synthetic_latents
from utils import InputError

SMALL_HEADS = {"MLP_HIDDEN_DIM": 32, "MLP_LAYERS": 2, "MLP_EPOCHS": 40, "MLP_BATCH_SIZE": 16, "MLP_PATIENCE": 5}


def noisy_data(num_heads, n, dim=4, seed=0):
    """x (H, n, dim), y (H, n) float64: a smooth function plus noise, so that heads overfit."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(num_heads, n, dim, generator=generator, dtype=torch.float64)
    noise = torch.randn(num_heads, n, generator=generator, dtype=torch.float64)
    y = torch.sin(x[..., 0]) + 0.3 * x[..., 1] + 0.5 * noise
    return x, y


def brute_force_loo_mae(x, y, width, ridge):
    """Refit without each point in turn (same kernel width, from all points) and predict it: the LOO MAE."""
    squared = torch.cdist(x, x) ** 2
    distances = torch.pdist(x)
    gamma = 1 / (2 * (width * distances.median()) ** 2)
    kernel = torch.exp(-gamma * squared)
    errors = []
    for i in range(len(x)):
        keep = torch.arange(len(x)) != i
        alpha = torch.linalg.solve(kernel[keep][:, keep] + ridge * torch.eye(len(x) - 1, dtype=x.dtype), y[keep])
        errors.append(float(kernel[i, keep] @ alpha - y[i]))
    return np.mean(np.abs(errors))


def test_leave_one_out_kernel_ridge_equals_brute_force_refits():
    x, y = noisy_data(1, 31)
    x, y = x[0], y[0]
    widths, ridges = [0.3, 1.0, 3.0], [1e-3, 1e-1, 1.0]
    brute = {(w, r): brute_force_loo_mae(x, y, w, r) for w in widths for r in ridges}
    for (w, r), expected in brute.items():
        assert heads.krr_fit_loo(x, y, [w], [r])["loo_mae"] == pytest.approx(expected, rel=1e-9)
    best = heads.krr_fit_loo(x, y, widths, ridges)
    assert (best["width"], best["ridge"]) == min(brute, key=brute.get)
    assert len(set(brute.values())) == len(brute)  # the choice is not a tie
    one = heads.krr_fit_loo(x, y, [best["width"]], [best["ridge"]])  # the kept alpha is that pair's full fit
    reference = heads.krr_fit(x, y, x[:3], y[:3], [best["width"]], [best["ridge"]])
    torch.testing.assert_close(one["alpha"], reference["alpha"], rtol=1e-9, atol=1e-12)


def test_identical_latents_are_refused_with_one_line(capsys, tmp_path):
    x = torch.ones(10, 3)
    with pytest.raises(InputError, match="45 of the 45 pairs of the 10 labelled structures have identical latents"):
        heads.krr_fit_loo(x, torch.randn(10), [1.0], [0.1])
    half = torch.cat([torch.ones(6, 3), torch.randn(4, 3)])  # 15 identical pairs of 45: the median is not 0
    assert np.isfinite(heads.krr_fit_loo(half, torch.randn(10), [1.0], [0.1])["loo_mae"])
    with pytest.raises(InputError, match="28 of the 45 pairs"):  # 8 identical rows: 28 pairs, more than half
        heads.krr_fit(torch.cat([torch.ones(8, 3), torch.randn(2, 3)]), torch.randn(10), x, torch.randn(10), [1.0],
                      [0.1])
    npz = write_synthetic_latents(tmp_path / "same.npz", z_all=np.ones((600, 16), np.float32))
    out = tmp_path / "out"
    message = expect_input_error(capsys, sm.main, ["--latents", str(npz), "--out-dir", str(out), "--ns", "10",
                                                   "--seeds", "0", "--strategies", "random", "--set", "MLP_EPOCHS=2"])
    assert "random seed 0, N=10: 45 of the 45 pairs of the 10 labelled structures have identical latents" in message
    assert not list(out.glob("*.csv"))


def test_cross_validated_epochs_of_heads_trained_together_equal_heads_alone():
    cfg = resolve_config(SMALL_HEADS)
    x, y = noisy_data(3, 37)
    seeds = [0, 5, 9]
    epochs, cv_mae = heads.cv_epochs(x, y, seeds, cfg)
    for h, seed in enumerate(seeds):
        alone, alone_mae = heads.cv_epochs(x[h:h + 1], y[h:h + 1], [seed], cfg)
        assert int(alone[0]) == int(epochs[h])
        assert float(alone_mae[0]) == pytest.approx(float(cv_mae[h]), rel=1e-9)
    assert 0 < int(epochs.min()) and int(epochs.max()) < cfg.MLP_EPOCHS
    again, _ = heads.cv_epochs(x, y, seeds, cfg)
    assert torch.equal(again, epochs)  # seeded folds


def test_held_out_labels_never_reach_the_fold_that_leaves_them_out():
    cfg = resolve_config(SMALL_HEADS)
    x, y = noisy_data(1, 25)
    fold_of_row, fold_rows, real = heads.cv_folds(25, [3], 5)
    assert sorted(fold_rows[0][real].tolist()) == list(range(25))  # every row held out exactly once
    assert all((fold_of_row[0][fold_rows[0, f][real[f]]] == f).all() for f in range(5))
    # a copy trained with its held-out labels replaced predicts them exactly as before the change
    source = torch.zeros(1, dtype=torch.long)
    weight = torch.as_tensor(fold_of_row != 0, dtype=x.dtype)
    changed = y.clone()
    changed[0, fold_of_row[0] == 0] = 100.0
    results = []
    for labels in (y, changed):
        stack = heads.StackedHeads([3], 4, cfg, x.device, x.dtype)
        final = {}
        heads.train_stack(stack, x, labels, [3], cfg, lambda params, live, epoch: final.update(params) or
                          torch.tensor([epoch < 4]), source=source, weight=weight)
        results.append(stack.shared(final, x[0]).detach())
    assert torch.equal(results[0], results[1])


def test_refit_for_a_fixed_epoch_count_trained_together_equals_alone():
    cfg = resolve_config(SMALL_HEADS)
    x, y = noisy_data(2, 30)
    params, stack = heads.train_mlp_epochs(x, y, [0, 1], torch.tensor([3, 7]), cfg)
    for h, (seed, epochs) in enumerate(((0, 3), (1, 7))):
        alone, alone_stack = heads.train_mlp_epochs(x[h:h + 1], y[h:h + 1], [seed], torch.tensor([epochs]), cfg)
        torch.testing.assert_close(stack.shared(params, x[h])[h], alone_stack.shared(alone, x[h])[0], rtol=1e-9,
                                   atol=1e-9)
    longer, longer_stack = heads.train_mlp_epochs(x[:1], y[:1], [0], torch.tensor([4]), cfg)
    assert not torch.equal(longer_stack.shared(longer, x[0]), stack.shared(params, x[0])[:1])


def test_head_cv_folds_changes_the_chosen_epochs():
    x, y = noisy_data(4, 40, seed=2)
    two = heads.cv_epochs(x, y, [0, 1, 2, 3], resolve_config({**SMALL_HEADS, "HEAD_CV_FOLDS": 2}))
    five = heads.cv_epochs(x, y, [0, 1, 2, 3], resolve_config(SMALL_HEADS))
    assert not torch.equal(two[1], five[1])
    assert not torch.equal(two[0], five[0])


RUN = ["--ns", "10", "30", "--seeds", "0", "1", "--strategies", "random", "kcenter", "--set", "MLP_EPOCHS=30",
       "--set", "MLP_PATIENCE=5", "--set", "MLP_HIDDEN_DIM=32"]


def scrambled_validation_labels(tmp_path, tuning):
    """Test MAEs and val MAEs of one run on the synthetic latents and one with every validation label replaced."""
    clean = write_synthetic_latents(tmp_path / "clean.npz")
    with np.load(clean) as npz:
        y = npz["y_all"].copy()
        y[npz["idx_val"]] = np.random.default_rng(1).normal(-6.5, 2.0, size=len(npz["idx_val"]))
    scrambled = write_synthetic_latents(tmp_path / "scrambled.npz", y_all=y)
    frames = []
    for npz in (clean, scrambled):
        out = tmp_path / f"{tuning}_{npz.stem}"
        sm.main(["--latents", str(npz), "--out-dir", str(out), *RUN, "--set", f"HEAD_TUNING={tuning!r}"])
        frames.append(pd.read_csv(out / "results_all.csv"))
    return frames


def test_no_label_outside_the_budget_reaches_a_head_by_default(tmp_path):
    assert resolve_config().HEAD_TUNING == "labels"
    clean, scrambled = scrambled_validation_labels(tmp_path, "labels")
    test_columns = ["mae", "rmse", "r2", "p95_abs_error", "max_abs_error", "best_epoch", "krr_width", "krr_ridge"]
    pd.testing.assert_frame_equal(clean[test_columns], scrambled[test_columns], check_exact=True)
    assert (clean["val_mae"] != scrambled["val_mae"]).all()  # measured after the fit, on the scrambled labels


def test_validation_tuning_sees_the_validation_labels(tmp_path):
    clean, scrambled = scrambled_validation_labels(tmp_path, "validation")
    for head in ("mlp", "krr"):
        mine = clean["head"] == head
        assert (clean[mine]["mae"] != scrambled[mine]["mae"]).any(), head


@pytest.mark.parametrize("argv, message", [
    (["--ns", "10", "--set", "HEAD_TUNING='test'"], "HEAD_TUNING='test': expected one of ['labels', 'validation']"),
    (["--ns", "4", "10"], "label budgets [4]: each N must be at least HEAD_CV_FOLDS=5"),
    (["--ns", "10", "--set", "HEAD_CV_FOLDS=1"], "HEAD_CV_FOLDS=1: expected 2 or more folds"),
])
def test_bad_tuning_settings_exit_with_one_line_before_any_output(capsys, tmp_path, argv, message):
    out = tmp_path / "out"
    args = ["--latents", str(write_synthetic_latents(tmp_path / "latents.npz")), "--out-dir", str(out), *argv]
    assert message in expect_input_error(capsys, sm.main, args)
    assert not out.exists()


def test_budgets_below_the_folds_are_fine_without_cross_validation(tmp_path):
    npz = write_synthetic_latents(tmp_path / "latents.npz")
    for name, extra in (("krr", ["--heads", "krr"]), ("validation", ["--set", "HEAD_TUNING='validation'"])):
        sm.main(["--latents", str(npz), "--out-dir", str(tmp_path / name), "--ns", "4", "--seeds", "0",
                 "--strategies", "random", "--set", "MLP_EPOCHS=2", *extra])
        assert len(pd.read_csv(tmp_path / name / "results_all.csv")) >= 1


def test_a_sampling_run_names_its_latents_and_their_writer(tmp_path):
    cfg = resolve_config({"TARGET": "homo"})
    arrays = {"y": np.linspace(-7, -6, 600), "index": np.arange(1, 601)}
    split = tuple(np.arange(600)[s] for s in (slice(0, 420), slice(420, 510), slice(510, 600)))
    z = np.random.default_rng(0).normal(size=(600, 8))
    latents.write_latents(tmp_path / "latents.npz", z, arrays, split, cfg, "encoder after epoch 3")
    written = latents.load_latents(tmp_path / "latents.npz")
    writer = json.loads(str(written["config"]))
    assert len(writer["git_commit"]) == 40 and isinstance(writer["git_dirty"], bool)
    sm.main(["--latents", str(tmp_path / "latents.npz"), "--out-dir", str(tmp_path / "out"), "--ns", "10",
             "--seeds", "0", "--strategies", "random", "--heads", "krr"])
    info = json.loads((tmp_path / "out" / "run_info.json").read_text())
    assert info["latent_source"] == "encoder after epoch 3"
    assert (info["latents_git_commit"], info["latents_git_dirty"]) == (writer["git_commit"], writer["git_dirty"])
    assert info["git_commit"] == writer["git_commit"]  # this run's own commit, from the same tree here
    assert (pd.read_csv(tmp_path / "out" / "summary.csv")["latent_source"] == "encoder after epoch 3").all()
    sm.main(["--latents", str(write_synthetic_latents(tmp_path / "older.npz")), "--out-dir", str(tmp_path / "older"),
             "--ns", "10", "--seeds", "0", "--strategies", "random", "--heads", "krr"])
    info = json.loads((tmp_path / "older" / "run_info.json").read_text())
    assert (info["latent_source"], info["latents_git_commit"], info["latents_git_dirty"]) == ("unknown",) * 3
    assert (pd.read_csv(tmp_path / "older" / "summary.csv")["latent_source"] == "unknown").all()
