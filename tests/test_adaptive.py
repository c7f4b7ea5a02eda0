"""The adaptive strategy: its rounds, what its labels change, the experiment's schedule check, and
--select with labels (adaptive and gp_variance write a score column)."""
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

@pytest.mark.parametrize("score", selection.GP_SCORES)
def test_round_one_is_gp_variance_and_later_rounds_follow_the_kernel_their_labels_choose(score):
    z, y = smooth_pool()
    cfg = resolve_config({**ROUNDS, "GP_SCORE": score})
    picks, variances, fits = adaptive.adaptive_selection(z, y, 3, cfg)
    first, first_variances = selection.gp_variance(z, 6, 3, cfg.GP_WIDTH, cfg.GP_NOISE, score=score)
    assert picks[:6].tolist() == first.tolist()
    torch.testing.assert_close(variances[:6], first_variances)
    for start, size, fit in ((6, 6, fits[0]), (12, 12, fits[1])):
        labelled = picks[:start]
        labels = (y[labelled] - y[labelled].mean()) / y[labelled].std()
        expected = heads.krr_fit_loo(z[labelled], labels, cfg.KRR_WIDTHS, cfg.KRR_RIDGES)
        assert (fit["width"], fit["ridge"]) == (expected["width"], expected["ridge"])
        again = selection.posterior_variance_greedy(z, size, expected["gamma"], expected["ridge"], labelled,
                                                    score=score)[0]
        assert picks[start:start + size].tolist() == again.tolist()
    assert len(set(picks.tolist())) == 24


def test_the_gp_score_changes_every_round():
    z, y = smooth_pool()
    picks = {score: adaptive.adaptive_selection(z, y, 3, resolve_config({**ROUNDS, "GP_SCORE": score}))[0]
             for score in selection.GP_SCORES}
    for rows in (slice(0, 6), slice(6, 12), slice(12, 24)):
        assert picks["variance"][rows].tolist() != picks["integrated"][rows].tolist()


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
    own = resolve_config({**ROUNDS, "GP_SCORE": "variance"})  # a seeded random first pick
    first_rounds = {seed: adaptive.adaptive_selection(z, y, seed, own)[0][:6].tolist() for seed in (5, 6)}
    assert first_rounds[5] != first_rounds[6]
    # "integrated" reads the seed only through the rows that measure the median distance: all of a small pool
    assert adaptive.adaptive_selection(z, y, 6, resolve_config(ROUNDS))[0].tolist() == long.tolist()


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


def test_labelled_rows_with_identical_latents_are_refused_for_adaptive():
    z = torch.randn(100, 4, generator=torch.Generator().manual_seed(0))
    z[:6] = z[0]
    labels = torch.arange(6, dtype=torch.float64)
    with pytest.raises(InputError) as error:
        adaptive.labelled_round(z, torch.arange(6), labels, 5, resolve_config(), "labels.csv")
    assert str(error.value).startswith("labels.csv: 15 of the 15 pairs of the 6 labelled structures have identical")
    assert str(error.value).endswith("use other latents or another strategy than adaptive")


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


# --- --select with labels -------------------------------------------------------------------

def pool_table(path):
    """The pool's structure_index (n,) and labels (n,) of a latents file."""
    arrays = latents.load_latents(path)
    return arrays["structure_index"][arrays["idx_train"]], arrays["y_all"][arrays["idx_train"]]


def select(tmp_path, latents_path, *argv, out="pick"):
    sm.main(["--latents", str(latents_path), "--out-dir", str(tmp_path / out), *argv])
    return pd.read_csv(tmp_path / out / "to_label.csv")


def test_gp_variance_writes_each_picks_posterior_variance_as_its_score(tmp_path):
    path = write_synthetic_latents(tmp_path / "latents.npz")
    to_label = select(tmp_path, path, "--select", "gp_variance", "--budget", "7", "--seed", "2")
    assert list(to_label) == ["rank", "structure_index", "pool_row", "npz_row", "score"]
    cfg = resolve_config()
    z = selection.selection_latents(latents.load_latents(path), cfg, "cpu")
    picks, variances = selection.gp_variance(z, 7, 2, cfg.GP_WIDTH, cfg.GP_NOISE, score=cfg.GP_SCORE)
    assert to_label["pool_row"].tolist() == picks.tolist()
    np.testing.assert_array_equal(to_label["score"].to_numpy(), variances.numpy())


@pytest.mark.parametrize("column", ["label", "homo"])
def test_one_adaptive_round_fits_the_labels_of_a_file(tmp_path, column):
    path = write_synthetic_latents(tmp_path / "latents.npz")
    index, y = pool_table(path)
    rows = [3, 50, 7, 120, 200]
    pd.DataFrame({"structure_index": index[rows], "note": "x", column: y[rows]}).to_csv(tmp_path / "done.csv",
                                                                                        index=False)
    to_label = select(tmp_path, path, "--select", "adaptive", "--budget", "6", "--labelled", str(tmp_path / "done.csv"))
    cfg = resolve_config()
    z = selection.selection_latents(latents.load_latents(path), cfg, "cpu")
    picks, variances, _ = adaptive.labelled_round(z, torch.tensor(rows), torch.as_tensor(y[rows]), 6, cfg, "test")
    assert to_label["pool_row"].tolist() == picks.tolist()
    np.testing.assert_array_equal(to_label["score"].to_numpy(), variances.numpy())
    shuffled = y[rows][[4, 0, 1, 2, 3]]  # the same structures, other labels: another kernel, other picks
    pd.DataFrame({"structure_index": index[rows], "label": shuffled}).to_csv(tmp_path / "other.csv", index=False)
    other = select(tmp_path, path, "--select", "adaptive", "--budget", "6", "--labelled", str(tmp_path / "other.csv"),
                   out="other")
    assert other["pool_row"].tolist() != to_label["pool_row"].tolist()


def test_one_adaptive_round_fits_the_labels_of_partly_labelled_latents(tmp_path):
    with np.load(write_synthetic_latents(tmp_path / "full.npz")) as npz:
        y = npz["y_all"]
    labelled = np.zeros(600, dtype=bool)
    labelled[np.arange(0, 600, 40)] = True
    path = write_synthetic_latents(tmp_path / "partly.npz", y_all=np.where(labelled, y, np.nan), labelled=labelled)
    to_label = select(tmp_path, path, "--select", "adaptive", "--budget", "5", "--labelled", "from-latents")
    arrays = latents.load_latents(path)
    rows = np.flatnonzero(labelled[arrays["idx_train"]])
    cfg = resolve_config()
    z = selection.selection_latents(arrays, cfg, "cpu")
    expected = adaptive.labelled_round(z, torch.as_tensor(rows), torch.as_tensor(y[arrays["idx_train"][rows]]), 5,
                                       cfg, "test")[0]
    assert to_label["pool_row"].tolist() == expected.tolist()


def labels_file(path, header, lines):
    path.write_text("\n".join([header, *lines]) + "\n")
    return str(path)


@pytest.mark.parametrize("header, lines, message", [
    ("structure_index,label", lambda i: [f"{i[0]},1.0", "100000,2.0"],
     "1 structure index values are not in the training pool of the npz"),
    ("structure_index,label", lambda i: [f"{i[0]},1.0", f"{i[1]},2.0", f"{i[0]},3.0"],
     "structure index values listed twice: ["),
    ("structure_index,label", lambda i: [f"{i[0]},1.0", f"{i[1]},"], "line 3 has no label value; expected a finite"),
    ("structure_index,label", lambda i: [f"{i[0]},1.0", f"{i[1]}"], "line 3 has no label value; expected a finite"),
    ("structure_index,label", lambda i: [f"{i[0]},1.0", f"{i[1]},high"],
     "line 3 has label 'high'; expected a finite number"),
    ("structure_index,label", lambda i: [f"{i[0]},nan", f"{i[1]},2"], "line 2 has label 'nan'; expected a finite"),
    ("structure_index,homo", lambda i: [f"{i[0]},1", f"{i[1]},-inf"], "line 3 has homo '-inf'; expected a finite"),
    ("structure_index", lambda i: [f"{i[0]}", f"{i[1]}"],
     "needs the labels of the labelled structures, in a CSV column named label or homo; found ['structure_index']"),
    ("structure_index,label", lambda i: [f"{i[0]},1.5"], "1 labelled structures; adaptive needs at least 2"),
    ("structure_index,label", lambda i: [f"{i[0]},1.5", f"{i[1]},1.5"],
     "the 2 labels are all 1.5; adaptive cannot fit a kernel"),
])
def test_a_bad_labels_file_is_named_before_any_output(capsys, tmp_path, header, lines, message):
    path = write_synthetic_latents(tmp_path / "latents.npz")
    index, _ = pool_table(path)
    done = labels_file(tmp_path / "done.csv", header, lines(index.tolist()))
    args = ["--latents", str(path), "--out-dir", str(tmp_path / "out"), "--select", "adaptive", "--budget", "5",
            "--labelled", done]
    got = expect_input_error(capsys, sm.main, args)
    assert message in got and done in got
    assert not (tmp_path / "out").exists()


def test_a_bare_index_file_names_no_label_column(capsys, tmp_path):
    path = write_synthetic_latents(tmp_path / "latents.npz")
    index, _ = pool_table(path)
    done = tmp_path / "done.txt"
    done.write_text(f"{index[0]}\n{index[1]}\n")
    args = ["--latents", str(path), "--out-dir", str(tmp_path / "out"), "--select", "adaptive", "--budget", "5",
            "--labelled", str(done)]
    assert f"{done}: --select adaptive needs the labels" in expect_input_error(capsys, sm.main, args)


@pytest.mark.parametrize("argv, message", [
    ([], "--select adaptive: needs the labels of the structures labelled so far; give --labelled FILE with a label "
         "column, or --labelled from-latents"),
    (["--seed", "3"], "--seed: not used by --select adaptive, whose picks follow from the labels alone"),
])
def test_adaptive_without_labels_or_with_a_seed_is_refused(capsys, tmp_path, argv, message):
    args = ["--latents", str(write_synthetic_latents(tmp_path / "latents.npz")), "--out-dir", str(tmp_path / "out"),
            "--select", "adaptive", "--budget", "5", *argv]
    assert message in expect_input_error(capsys, sm.main, args)
    assert not (tmp_path / "out").exists()


def test_partly_labelled_latents_with_one_label_are_refused(capsys, tmp_path):
    labelled = np.zeros(600, dtype=bool)
    labelled[latents.load_latents(write_synthetic_latents(tmp_path / "full.npz"))["idx_train"][0]] = True
    y = np.where(labelled, 1.0, np.nan)
    path = write_synthetic_latents(tmp_path / "partly.npz", y_all=y, labelled=labelled)
    args = ["--latents", str(path), "--out-dir", str(tmp_path / "out"), "--select", "adaptive", "--budget", "5",
            "--labelled", "from-latents"]
    assert f"{path}: 1 labelled structures; adaptive needs at least 2" in expect_input_error(capsys, sm.main, args)
    assert not (tmp_path / "out").exists()
