"""The adaptive strategy: its rounds, what its labels change, and the experiment's schedule check."""
import numpy as np
import pandas as pd
import pytest
import torch

import adaptive
import evaluation
import heads
import latents
import sampling_mlp_experiment as sm
import selection
from cli import resolve_config
from conftest import expect_input_error, write_synthetic_latents
from utils import InputError

ROUNDS = {"ADAPTIVE_ROUNDS": [6, 6, 12]}


def smooth_pool(n=300, dim=4, seed=0):
    """Latents (n, dim) and labels (n,) that are a smooth function of them."""
    z = torch.randn(n, dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return z, torch.sin(2 * z[:, 0]) + z[:, 1] ** 2


# --- the rounds ---------------------------------------------------------------------------

def test_round_one_is_gp_variance_and_later_rounds_follow_the_kernel_their_labels_choose():
    z, y = smooth_pool()
    cfg = resolve_config(ROUNDS)
    picks, variances, fits = adaptive.adaptive_selection(z, y, 3, cfg)
    first, first_variances = selection.gp_variance(z, 6, 3, cfg.GP_WIDTH, cfg.GP_NOISE)
    assert picks[:6].tolist() == first.tolist()
    torch.testing.assert_close(variances[:6], first_variances)
    for start, size, fit in ((6, 6, fits[0]), (12, 12, fits[1])):
        labelled = picks[:start]
        labels = (y[labelled] - y[labelled].mean()) / y[labelled].std()
        expected = heads.krr_fit_loo(z[labelled], labels, cfg.KRR_WIDTHS, cfg.KRR_RIDGES)
        assert (fit["width"], fit["ridge"]) == (expected["width"], expected["ridge"])
        again = selection.posterior_variance_greedy(z, size, expected["gamma"], expected["ridge"], labelled)[0]
        assert picks[start:start + size].tolist() == again.tolist()
    assert len(set(picks.tolist())) == 24


def test_scrambled_labels_move_the_picks_after_round_one_only():
    z, y = smooth_pool()
    cfg = resolve_config(ROUNDS)
    picks = adaptive.adaptive_selection(z, y, 0, cfg)[0]
    scrambled = y[torch.randperm(len(y), generator=torch.Generator().manual_seed(1))]
    other = adaptive.adaptive_selection(z, scrambled, 0, cfg)[0]
    assert picks[:6].tolist() == other[:6].tolist()
    assert picks[6:].tolist() != other[6:].tolist()


def test_picks_of_a_budget_are_a_prefix_of_a_larger_budget_and_repeat_for_a_seed():
    z, y = smooth_pool()
    short = adaptive.adaptive_selection(z, y, 5, resolve_config({"ADAPTIVE_ROUNDS": [6, 6]}))[0]
    long = adaptive.adaptive_selection(z, y, 5, resolve_config(ROUNDS))[0]
    assert long[:12].tolist() == short.tolist()
    assert adaptive.adaptive_selection(z, y, 5, resolve_config(ROUNDS))[0].tolist() == long.tolist()
    assert adaptive.adaptive_selection(z, y, 6, resolve_config(ROUNDS))[0][:6].tolist() != long[:6].tolist()


@pytest.mark.parametrize("rounds, ns, message", [
    ([10, 30], [10, 20, 50], "ADAPTIVE_ROUNDS=[10, 30]: cumulative sums [10, 40] must include every budget of "
                             "SAMPLING_NS [10, 20, 50]"),
    ([10, 10, 30, 50], [10, 20, 50], "cumulative sums [10, 20, 50, 100] must include every budget of SAMPLING_NS "
                                     "[10, 20, 50] and end at its largest"),
])
def test_rounds_that_miss_a_budget_are_refused_by_the_plan(rounds, ns, message):
    cfg = resolve_config({"SAMPLING_STRATEGIES": ["random", "adaptive"], "SAMPLING_NS": ns, "ADAPTIVE_ROUNDS": rounds})
    with pytest.raises(InputError) as error:
        evaluation.check_plan(cfg, 420)
    assert message in str(error.value)
    cfg.SAMPLING_STRATEGIES = ["random", "gp_variance"]  # checked only when adaptive runs
    assert evaluation.check_plan(cfg, 420) == ns


def test_the_experiment_refuses_the_rounds_before_any_output(capsys, tmp_path):
    args = ["--latents", str(write_synthetic_latents(tmp_path / "latents.npz")), "--out-dir", str(tmp_path / "out"),
            "--strategies", "random", "adaptive", "--ns", "10", "20"]
    message = expect_input_error(capsys, sm.main, args)
    assert "ADAPTIVE_ROUNDS=[10, 10, 30, 50, 100, 300, 500]: cumulative sums" in message
    assert not (tmp_path / "out").exists()


def test_the_experiment_runs_adaptive_on_the_pool_labels(tmp_path):
    path = write_synthetic_latents(tmp_path / "latents.npz")
    sm.main(["--latents", str(path), "--out-dir", str(tmp_path / "out"), "--strategies", "random", "adaptive",
             "--ns", "10", "30", "--seeds", "0", "--heads", "krr", "--set", "ADAPTIVE_ROUNDS=[10, 20]"])
    results = pd.read_csv(tmp_path / "out" / "results_adaptive.csv")
    assert results["n_labels"].tolist() == [10, 30]
    arrays = latents.load_latents(path)
    cfg = resolve_config({"ADAPTIVE_ROUNDS": [10, 20]})
    z = selection.selection_latents(arrays, cfg, "cpu")
    expected = adaptive.adaptive_selection(z, torch.as_tensor(arrays["y_all"][arrays["idx_train"]]), 0, cfg)[0]
    selected = np.load(tmp_path / "out" / "selected_adaptive_seed0.npy")
    np.testing.assert_array_equal(selected, arrays["idx_train"][expected.numpy()])
    log = (tmp_path / "out" / "sampling.log").read_text()
    assert "adaptive seed 0: kernel width (median distances) / noise chosen by leave-one-out" in log

