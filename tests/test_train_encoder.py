"""The encoder script end to end: outputs, checkpoints, resume and bad input."""
import json
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import ROOT, expect_input_error, run_train

import data
import train_encoder_qm9 as tr

EPOCH_LINE = re.compile(r"epoch +(\d+)/(\d+) train ([\d.]+) val ([\d.]+) \[atom_counts [\d.]+ distance_hist [\d.]+ "
                        r"pair_hist [\d.]+\] lr [\d.e+-]+ [\d.]+ s \d+ mol/s")


def epoch_lines(run_dir):
    return [EPOCH_LINE.search(line) for line in (run_dir / "train.log").read_text().splitlines()
            if EPOCH_LINE.search(line)]


def test_run_folder_holds_everything_to_reproduce_it(small_run):
    names = {p.name for p in small_run.iterdir()}
    assert names == {"config.json", "run_info.json", "train.log", tr.BEST_ENCODER, tr.BEST_DECODER, tr.LAST,
                     tr.LATENTS_NAME}
    info = json.loads((small_run / "run_info.json").read_text())
    assert {"git_commit", "packages", "python"} <= set(info) and "e3nn" in info["packages"]
    assert json.loads((small_run / "config.json").read_text())["MAX_STRUCTURES"] == 300


def test_latents_npz_keys_shapes_dtypes_and_units(small_run, qm9_arrays):
    with np.load(small_run / tr.LATENTS_NAME, allow_pickle=False) as npz:
        arrays = dict(npz)
    assert set(arrays) == {"z_all", "y_all", "idx_train", "idx_val", "idx_test", "qm9_index", "config"}
    assert arrays["z_all"].shape == (300, 128) and arrays["z_all"].dtype == np.float32
    assert arrays["y_all"].shape == (300,) and arrays["y_all"].dtype == np.float64
    assert np.isfinite(arrays["z_all"]).all()
    splits = [arrays[k] for k in ("idx_train", "idx_val", "idx_test")]
    assert [len(s) for s in splits] == [240, 30, 30] and all(s.dtype == np.int64 for s in splits)
    assert sorted(np.concatenate(splits).tolist()) == list(range(300))
    assert arrays["y_all"].mean() == pytest.approx(-6.5, abs=0.2)  # HOMO in eV, not Hartree
    full_row = np.searchsorted(qm9_arrays["index"], arrays["qm9_index"])  # the cache is sorted by Index
    np.testing.assert_array_equal(qm9_arrays["index"][full_row], arrays["qm9_index"])
    np.testing.assert_array_equal(qm9_arrays["homo_ev"][full_row], arrays["y_all"])
    assert json.loads(str(arrays["config"]))["LATENT_DIM"] == 128


def test_one_fixed_format_log_line_per_epoch_and_validation_loss_falls(small_run):
    lines = epoch_lines(small_run)
    assert [int(m.group(1)) for m in lines] == [1, 2, 3]
    val = [float(m.group(4)) for m in lines]
    assert val[-1] < val[0]


def test_checkpoints_load_safely_and_reproduce_the_latents(small_run, qm9_root):
    for name in (tr.BEST_ENCODER, tr.BEST_DECODER, tr.LAST):
        torch.load(small_run / name, weights_only=True)
    encoder = tr.load_encoder(small_run / tr.BEST_ENCODER)
    cfg = tr.resolve_config({"DATA_ROOT": str(qm9_root), "MAX_STRUCTURES": 300})
    structures = data.Structures(tr.load_structures(cfg), cfg.ATOM_TYPES, "cpu")
    latents = tr.extract_latents(encoder, structures, batch_size=7)
    with np.load(small_run / tr.LATENTS_NAME) as npz:
        np.testing.assert_allclose(latents, npz["z_all"], rtol=1e-5, atol=1e-5)


def test_resume_refuses_other_changes_and_missing_runs(capsys, tmp_path, small_run):
    message = expect_input_error(capsys, tr.main, ["--resume", "--lr", "0.1", "--out-dir", str(small_run)])
    assert "only --epochs may change, not ['ENC_LR']" in message
    message = expect_input_error(capsys, tr.main, ["--resume", "--out-dir", str(tmp_path / "nothing")])
    assert "config.json: not found" in message
    assert "--resume needs --out-dir" in expect_input_error(capsys, tr.main, ["--resume"])


@pytest.mark.parametrize("argv, message", [
    (["--max-molecules", "200000"], "max molecules 200000: expected 1..130831"),
    (["--set", "ENC_HIDDEN_IRREPS=16x0e+16x1z"], "ENC_HIDDEN_IRREPS='16x0e+16x1z': not an irreps string"),
    (["--set", "TRAIN_VAL_TEST_SPLIT=(0.7, 0.1, 0.1)"], "TRAIN_VAL_TEST_SPLIT=(0.7, 0.1, 0.1): expected three"),
    (["--set", "ATOM_TYPES=('H', 'C', 'N', 'O')"], "atomic numbers [9] that ATOM_TYPES"),
    (["--set", "NUM_LAYERS=2"], "unknown config key 'NUM_LAYERS' (did you mean ENC_NUM_LAYERS?)"),
    (["--set", "ENC_LR_FACTOR=1.5"], "ENC_LR_FACTOR=1.5: expected a factor below 1"),
    (["--set", "DIST_HIST_BINS=1"], "DIST_HIST_RANGE=(0.5, 6.0), DIST_HIST_BINS=1: expected (start, stop)"),
    (["--set", "PAIR_HIST_RANGE=(3.0, 1.0)"], "PAIR_HIST_RANGE=(3.0, 1.0), PAIR_HIST_BINS=24: expected"),
    (["--batch-size", "0"], "ENC_BATCH_SIZE=0: expected a positive number"),
    (["--device", "cuda:7"], "--device 'cuda:7': CUDA is not available here"),
])
def test_bad_settings_exit_with_one_line(capsys, qm9_root, tmp_path, argv, message):
    out = tmp_path / "run"
    got = expect_input_error(capsys, tr.main, ["--data-root", str(qm9_root), "--out-dir", str(out), *argv])
    assert message in got
    assert not out.exists() or not any(p.suffix in {".pt", ".npz"} for p in out.iterdir())


def test_corrupt_cache_exits_with_one_line(capsys, tmp_path):
    (tmp_path / data.CACHE_NAME).write_bytes(b"garbage")
    message = expect_input_error(capsys, tr.main, ["--data-root", str(tmp_path), "--out-dir", str(tmp_path / "r")])
    assert f"{tmp_path / data.CACHE_NAME}: corrupt QM9 cache" in message


def test_command_line_exit_status_and_message(tmp_path):
    (tmp_path / "file").write_text("x")
    script = ROOT / "train_encoder_qm9.py"
    done = subprocess.run([sys.executable, str(script), "--out-dir", str(tmp_path / "file" / "run")],
                          capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [f"error: output directory {tmp_path / 'file' / 'run'}: not writable "
                                                f"(Not a directory)"]


def test_divergence_is_reported_by_epoch(capsys, qm9_root, tmp_path, monkeypatch):
    monkeypatch.setattr(tr, "evaluate", lambda *args: (float("nan"), {}))
    message = expect_input_error(capsys, tr.main, ["--data-root", str(qm9_root), "--out-dir", str(tmp_path),
                                                   "--max-molecules", "40", "--epochs", "2"])
    assert message == "error: training diverged in epoch 1 (validation loss nan); lower ENC_LR"
