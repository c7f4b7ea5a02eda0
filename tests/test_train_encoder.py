"""The encoder script end to end: outputs, checkpoints, resume and bad input."""
import io
import json
import random
import re
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import cli
import data
import descriptors
import latents
import qm9
import train_encoder_qm9 as tr
import training
from conftest import ROOT, assert_same_tensors, epoch_lines, expect_input_error, run_train


def test_run_folder_holds_everything_to_reproduce_it(small_run):
    names = {p.name for p in small_run.iterdir()}
    assert names == {"config.json", "run_info.json", "train.log", training.BEST_ENCODER, training.BEST_DECODER,
                     training.LAST,
                     latents.latents_name("qm9")}
    info = json.loads((small_run / "run_info.json").read_text())
    assert {"git_commit", "packages", "python"} <= set(info) and "e3nn" in info["packages"]
    assert json.loads((small_run / "config.json").read_text())["MAX_STRUCTURES"] == 300


def test_latents_npz_keys_shapes_dtypes_and_units(small_run, qm9_arrays):
    with np.load(small_run / latents.latents_name("qm9"), allow_pickle=False) as npz:
        arrays = dict(npz)
    assert set(arrays) == {"z_all", "y_all", "idx_train", "idx_val", "idx_test", "structure_index", "config",
                           "latent_source", "dataset", "target_name", "target_unit"}
    assert (str(arrays["dataset"]), str(arrays["target_name"]), str(arrays["target_unit"])) == ("qm9", "homo", "eV")
    best_epoch = torch.load(small_run / training.BEST_ENCODER)["epoch"]
    assert str(arrays["latent_source"]) == f"encoder after epoch {best_epoch}"
    assert arrays["z_all"].shape == (300, 128) and arrays["z_all"].dtype == np.float32
    assert arrays["y_all"].shape == (300,) and arrays["y_all"].dtype == np.float64
    assert np.isfinite(arrays["z_all"]).all()
    splits = [arrays[k] for k in ("idx_train", "idx_val", "idx_test")]
    assert [len(s) for s in splits] == [240, 30, 30] and all(s.dtype == np.int64 for s in splits)
    assert sorted(np.concatenate(splits).tolist()) == list(range(300))
    assert arrays["y_all"].mean() == pytest.approx(-6.5, abs=0.2)  # HOMO in eV, not Hartree
    full_row = np.searchsorted(qm9_arrays["index"], arrays["structure_index"])  # the cache is sorted by Index
    np.testing.assert_array_equal(qm9_arrays["index"][full_row], arrays["structure_index"])
    np.testing.assert_array_equal(qm9_arrays["homo_ev"][full_row], arrays["y_all"])
    assert json.loads(str(arrays["config"]))["LATENT_DIM"] == 128


def test_one_fixed_format_log_line_per_epoch_and_validation_loss_falls(small_run):
    lines = epoch_lines(small_run)
    assert [int(m.group(1)) for m in lines] == [1, 2, 3]
    val = [float(m.group(4)) for m in lines]
    assert val[-1] < val[0]


def test_checkpoints_load_safely_and_reproduce_the_latents(small_run, qm9_root):
    for name in (training.BEST_ENCODER, training.BEST_DECODER, training.LAST):
        torch.load(small_run / name, weights_only=True)
    encoder = training.load_encoder(small_run / training.BEST_ENCODER)
    arrays, cfg, _ = data.load_structures(cli.resolve_config({"DATA_ROOT": str(qm9_root), "MAX_STRUCTURES": 300}))
    structures = data.Structures(arrays, cfg.ATOM_TYPES, "cpu")
    extracted = training.extract_latents(encoder, structures, batch_size=7, max_atoms=cfg.BATCH_MAX_ATOMS)
    with np.load(small_run / latents.latents_name("qm9")) as npz:
        np.testing.assert_allclose(extracted, npz["z_all"], rtol=1e-5, atol=1e-5)


def test_resume_refuses_other_changes_and_missing_runs(capsys, tmp_path, small_run):
    message = expect_input_error(capsys, tr.main, ["--resume", "--lr", "0.1", "--out-dir", str(small_run)])
    assert "only --epochs may change, not ['ENC_LR']" in message
    message = expect_input_error(capsys, tr.main, ["--resume", "--out-dir", str(tmp_path / "nothing")])
    assert "config.json: not found" in message
    assert "--resume needs --out-dir" in expect_input_error(capsys, tr.main, ["--resume"])


@pytest.mark.parametrize("argv, message", [
    (["--max-molecules", "200000"], "max structures 200000: expected 1..130831"),
    (["--set", "ENC_HIDDEN_IRREPS=16x0e+16x1z"], "ENC_HIDDEN_IRREPS='16x0e+16x1z': not an irreps string"),
    (["--set", "TRAIN_VAL_TEST_SPLIT=(0.7, 0.1, 0.1)"], "TRAIN_VAL_TEST_SPLIT=(0.7, 0.1, 0.1): expected three"),
    (["--set", "ATOM_TYPES=('H', 'C', 'N', 'O')"], "atomic numbers [9] that ATOM_TYPES"),
    (["--set", "NUM_LAYERS=2"], "unknown config key 'NUM_LAYERS' (did you mean ENC_NUM_LAYERS?)"),
    (["--set", "ENC_LR_FACTOR=1.5"], "ENC_LR_FACTOR=1.5: expected a factor below 1"),
    (["--set", "DIST_HIST_BINS=1"], "DIST_HIST_RANGE=(0.5, 6.0), DIST_HIST_BINS=1: expected (start, stop)"),
    (["--set", "PAIR_HIST_RANGE=(3.0, 1.0)"], "PAIR_HIST_RANGE=(3.0, 1.0), PAIR_HIST_BINS=24: expected"),
    (["--batch-size", "0"], "ENC_BATCH_SIZE=0: expected a positive number"),
    (["--device", "cuda:7"], "--device 'cuda:7': CUDA is not available here"),
    (["--device", "meta"], "--device 'meta': cannot hold data"),
    (["--seed", str(2**64)], "SEED=18446744073709551616: expected a seed in 0..4294967295"),
    (["--lr", "nan"], "ENC_LR=nan: expected a finite number"),
    (["--lr", "inf"], "ENC_LR=inf: expected a finite number"),
    (["--set", "CUTOFF=1e999"], "CUTOFF=inf: expected a finite number"),
    (["--set", "CUTOFF=0.01", "--max-molecules", "50"], "CUTOFF=0.01: no training atom has a neighbour that close"),
    (["--set", "ATOM_TYPES=('H', 'C', 'N', 'O', 'F', 'C')"], "ATOM_TYPES lists ['C'] more than once"),
    (["--max-molecules", "1"], "1 molecules with TRAIN_VAL_TEST_SPLIT=(0.8, 0.1, 0.1) leave 1 for training and 0"),
    (["--max-molecules", "3"], "3 molecules with TRAIN_VAL_TEST_SPLIT=(0.8, 0.1, 0.1) leave 2 for training and 0"),
])
def test_bad_settings_exit_with_one_line_and_no_run_folder(capsys, qm9_root, tmp_path, argv, message):
    out = tmp_path / "run"
    got = expect_input_error(capsys, tr.main, ["--data-root", str(qm9_root), "--out-dir", str(out), *argv])
    assert message in got
    assert not out.exists()


def test_data_root_that_is_a_file(capsys, tmp_path):
    (tmp_path / "root").write_text("x")
    message = expect_input_error(capsys, tr.main, ["--data-root", str(tmp_path / "root"), "--out-dir",
                                                   str(tmp_path / "run")])
    assert message == f"error: DATA_ROOT {tmp_path / 'root'}: a file, expected a folder for the QM9 cache"


def test_coincident_atoms_are_named_before_training(capsys, qm9_arrays, tmp_path):
    arrays = data.take_structures(qm9_arrays, np.arange(40))
    first = arrays["n_atoms"][:7].sum()
    arrays["pos"][first + 2] = arrays["pos"][first]  # molecule 7: atom 2 onto atom 0
    np.savez(tmp_path / qm9.CACHE_NAME, **arrays)
    message = expect_input_error(capsys, tr.main, ["--data-root", str(tmp_path), "--out-dir", str(tmp_path / "run")])
    assert f"structure_index {arrays['index'][7]}: atoms 0 and 2 (0-based) are 0 Angstrom apart" in message
    assert not (tmp_path / "run").exists()


def test_corrupt_cache_exits_with_one_line(capsys, tmp_path):
    (tmp_path / qm9.CACHE_NAME).write_bytes(b"garbage")
    message = expect_input_error(capsys, tr.main, ["--data-root", str(tmp_path), "--out-dir", str(tmp_path / "r")])
    assert f"{tmp_path / qm9.CACHE_NAME}: not an npz archive (no zip header); expected a QM9 cache" in message


def test_command_line_exit_status_and_message(tmp_path):
    (tmp_path / "file").write_text("x")
    script = ROOT / "train_encoder_qm9.py"
    done = subprocess.run([sys.executable, str(script), "--out-dir", str(tmp_path / "file" / "run")],
                          capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [f"error: output directory {tmp_path / 'file' / 'run'}: not writable "
                                                f"(Not a directory)"]


@pytest.mark.parametrize("which", ["training", "validation"])
def test_a_non_finite_loss_stops_the_run_and_leaves_nothing(capsys, qm9_root, tmp_path, monkeypatch, which):
    if which == "training":
        monkeypatch.setattr(training, "train_epoch", lambda *args: torch.tensor(float("inf")))
    else:
        monkeypatch.setattr(training, "evaluate", lambda *args: (float("nan"), {}))
    message = expect_input_error(capsys, tr.main, ["--data-root", str(qm9_root), "--out-dir", str(tmp_path),
                                                   "--max-molecules", "40", "--epochs", "2"])
    loss = "inf" if which == "training" else "nan"
    assert message == f"error: training diverged in epoch 1 ({which} loss {loss}); lower ENC_LR"
    assert list(tmp_path.iterdir()) == []  # the folder was there before the run: it stays, empty


def test_a_diverging_learning_rate_leaves_no_run_folder(capsys, qm9_root, tmp_path):
    out = tmp_path / "runs" / "diverged"
    message = expect_input_error(capsys, tr.main, ["--data-root", str(qm9_root), "--out-dir", str(out),
                                                   "--max-molecules", "40", "--epochs", "2", "--lr", "1e6"])
    assert re.fullmatch(r"error: training diverged in epoch 1 \((training|validation) loss nan\); lower ENC_LR", message)
    assert list(tmp_path.iterdir()) == []


# --- resume and the run folder -------------------------------------------------------

@pytest.fixture
def finished_run(small_run, tmp_path):
    """A private copy of the finished 3-epoch run."""
    return Path(shutil.copytree(small_run, tmp_path / "finished"))


def folder_bytes(run_dir):
    return {p.name: p.read_bytes() for p in run_dir.iterdir()}


def truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def random_bytes(path):
    path.write_bytes(np.random.default_rng(0).bytes(4096))


def drop_scheduler(path):
    checkpoint = torch.load(path, weights_only=True)
    del checkpoint["scheduler"]
    torch.save(checkpoint, path)


@pytest.mark.parametrize("damage, message", [
    (truncate, "not a readable checkpoint"),
    (random_bytes, "not a readable checkpoint"),
    (drop_scheduler, "lacks ['scheduler']; expected a last.pt written by this script"),
])
def test_resume_names_a_damaged_checkpoint_and_keeps_the_run(capsys, finished_run, damage, message):
    damage(finished_run / training.LAST)
    before = folder_bytes(finished_run)
    got = expect_input_error(capsys, tr.main, ["--resume", "--epochs", "4", "--out-dir", str(finished_run)])
    assert got.startswith(f"error: {finished_run / training.LAST}: {message}")
    assert folder_bytes(finished_run) == before


def test_resume_refuses_another_runs_checkpoint(capsys, finished_run, qm9_root, tmp_path):
    run_train(["--data-root", qm9_root, "--max-molecules", 40, "--epochs", 1, "--set", "LATENT_DIM=64",
               "--out-dir", tmp_path / "other"])
    shutil.copy(tmp_path / "other" / training.LAST, finished_run / training.LAST)
    before = folder_bytes(finished_run)
    message = expect_input_error(capsys, tr.main, ["--resume", "--epochs", "4", "--out-dir", str(finished_run)])
    assert re.search(rf"{finished_run / training.LAST}: its settings \[.*'LATENT_DIM'.*\] differ from", message)
    assert folder_bytes(finished_run) == before


def test_resume_refuses_fewer_epochs_and_a_finished_run(capsys, finished_run):
    before = folder_bytes(finished_run)
    message = expect_input_error(capsys, tr.main, ["--resume", "--epochs", "2", "--out-dir", str(finished_run)])
    assert f"--epochs 2: {finished_run} has already trained 3 epochs" in message
    message = expect_input_error(capsys, tr.main, ["--resume", "--out-dir", str(finished_run)])
    assert f"{finished_run}: finished, all 3 epochs trained and the latents written" in message
    assert folder_bytes(finished_run) == before


def test_resume_after_a_kill_before_the_latents_only_exports_them(finished_run):
    written = (finished_run / latents.latents_name("qm9")).read_bytes()
    (finished_run / latents.latents_name("qm9")).unlink()
    last = (finished_run / training.LAST).read_bytes()
    run_train(["--resume", "--out-dir", finished_run])
    assert (finished_run / training.LAST).read_bytes() == last
    with np.load(io.BytesIO(written)) as expected, np.load(finished_run / latents.latents_name("qm9")) as got:
        np.testing.assert_array_equal(expected["z_all"], got["z_all"])


def test_a_second_run_into_a_used_folder_is_refused(capsys, finished_run, qm9_root):
    before = folder_bytes(finished_run)
    message = expect_input_error(capsys, tr.main, ["--data-root", str(qm9_root), "--max-molecules", "40",
                                                   "--out-dir", str(finished_run)])
    assert f"{finished_run}: already holds files of a run; choose another --out-dir" in message
    with cli.run_folder(finished_run, resume=True):  # a run at work in the folder holds its lock
        message = expect_input_error(capsys, tr.main, ["--resume", "--epochs", "4", "--out-dir", str(finished_run)])
    assert f"{finished_run}: another run is writing into this folder now" in message
    assert folder_bytes(finished_run) == before


def test_resume_starts_a_run_killed_before_its_first_checkpoint_from_the_beginning(qm9_root, tmp_path):
    run_train(["--data-root", qm9_root, "--max-molecules", 40, "--epochs", 1, "--out-dir", tmp_path / "straight"])
    killed = Path(shutil.copytree(tmp_path / "straight", tmp_path / "killed"))
    for name in (training.LAST, latents.latents_name("qm9")):  # killed in epoch 1, between the two checkpoints
        (killed / name).unlink()
    run_train(["--resume", "--out-dir", killed])
    assert "the run stopped before its first checkpoint; it starts over" in (killed / "train.log").read_text()
    straight, resumed = (read_npz(run / latents.latents_name("qm9")) for run in (tmp_path / "straight", killed))
    np.testing.assert_array_equal(straight["z_all"], resumed["z_all"])
    assert_same_tensors(torch.load(tmp_path / "straight" / training.LAST)["encoder"],
                        torch.load(killed / training.LAST)["encoder"], "encoder")


def test_resume_refuses_a_folder_of_latents_without_a_checkpoint(capsys, qm9_root, tmp_path):
    run_train(["--data-root", qm9_root, *SMALL, "--descriptor-latents", "--out-dir", tmp_path / "descriptors"])
    message = expect_input_error(capsys, tr.main, ["--resume", "--out-dir", str(tmp_path / "descriptors")])
    assert f"{tmp_path / 'descriptors' / training.LAST}: not found beside the latents" in message


def test_temporary_files_of_a_killed_run_are_removed(finished_run):
    for name in (f".{training.LAST}.4242.tmp", f".{latents.latents_name('qm9')}.4242.tmp"):
        (finished_run / name).write_bytes(b"half")
    run_train(["--resume", "--epochs", 4, "--out-dir", finished_run])
    assert not list(finished_run.glob(".*"))
    assert torch.load(finished_run / training.LAST, weights_only=True)["epoch"] == 4


def script(argv, **kwargs):
    return subprocess.Popen([sys.executable, str(ROOT / "train_encoder_qm9.py"), *map(str, argv)], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, **kwargs)


def test_killed_at_a_random_moment_and_resumed_equals_an_uninterrupted_run(qm9_root, tmp_path):
    argv = ["--data-root", qm9_root, "--max-molecules", 200, "--batch-size", 16, "--epochs", 5]
    run_train([*argv, "--out-dir", tmp_path / "straight"])
    killed = script([*argv, "--out-dir", tmp_path / "killed"])
    while not (tmp_path / "killed" / training.LAST).exists():  # killed once it has a checkpoint to resume from
        assert killed.poll() is None, killed.stderr.read()
        time.sleep(0.05)
    time.sleep(random.uniform(0, 2))  # then anywhere in the epochs that follow, or mid-write
    killed.kill()
    killed.wait()
    run_train(["--resume", "--out-dir", tmp_path / "killed"])
    straight = torch.load(tmp_path / "straight" / training.LAST, weights_only=True)
    resumed = torch.load(tmp_path / "killed" / training.LAST, weights_only=True)
    for part in ("encoder", "decoder"):
        assert_same_tensors(straight[part], resumed[part], part)
    assert not list((tmp_path / "killed").glob(".*"))


def test_a_full_disk_names_the_file_and_keeps_the_previous_checkpoint(finished_run):
    before = {p.name: p.read_bytes() for p in finished_run.glob("*.pt")}
    limit = min(len(b) for b in before.values()) // 2  # every checkpoint is bigger than a file may now grow

    def limit_file_size():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    done = script(["--resume", "--epochs", 4, "--out-dir", finished_run], preexec_fn=limit_file_size)
    _, stderr = done.communicate(timeout=300)
    assert done.returncode == 2
    assert re.fullmatch(rf"error: {finished_run}/(last|encoder_struct)\.pt: cannot write \(File too large\); the "
                        r"previous file, if any, is unchanged", stderr.strip().splitlines()[-1])
    assert {p.name: p.read_bytes() for p in finished_run.glob("*.pt")} == before
    assert not list(finished_run.glob(".*"))


def read_npz(path):
    with np.load(path) as npz:
        return dict(npz)


SMALL = ["--max-molecules", 120, "--batch-size", 32]


def test_zero_epochs_export_the_untrained_encoder_and_resume_into_training(qm9_root, tmp_path):
    run_train(["--data-root", qm9_root, *SMALL, "--epochs", 0, "--out-dir", tmp_path / "untrained"])
    untrained = read_npz(tmp_path / "untrained" / latents.latents_name("qm9"))
    assert str(untrained["latent_source"]) == "encoder after epoch 0 (untrained)"
    assert torch.load(tmp_path / "untrained" / training.BEST_ENCODER)["epoch"] == 0
    assert "untrained encoder (ENC_EPOCHS=0): val" in (tmp_path / "untrained" / "train.log").read_text()
    run_train(["--data-root", qm9_root, *SMALL, "--epochs", 2, "--out-dir", tmp_path / "straight"])
    trained = read_npz(tmp_path / "straight" / latents.latents_name("qm9"))
    assert np.abs(trained["z_all"] - untrained["z_all"]).max() > 1e-3
    run_train(["--resume", "--epochs", 2, "--out-dir", tmp_path / "untrained"])
    resumed = read_npz(tmp_path / "untrained" / latents.latents_name("qm9"))
    np.testing.assert_array_equal(resumed["z_all"], trained["z_all"])


def test_descriptor_latents_are_the_standardized_targets_on_the_same_split(capsys, qm9_root, tmp_path):
    run_train(["--data-root", qm9_root, *SMALL, "--descriptor-latents", "--out-dir", tmp_path / "descriptors"])
    run_train(["--data-root", qm9_root, *SMALL, "--epochs", 1, "--out-dir", tmp_path / "encoder"])
    control = read_npz(tmp_path / "descriptors" / latents.latents_name("qm9"))
    encoder = read_npz(tmp_path / "encoder" / latents.latents_name("qm9"))
    for key in ("y_all", "idx_train", "idx_val", "idx_test", "structure_index"):
        np.testing.assert_array_equal(control[key], encoder[key])
    prepared = training.prepare_data(cli.resolve_config({"DATA_ROOT": str(qm9_root), "MAX_STRUCTURES": 120}),
                               torch.device("cpu"))
    targets, cfg = prepared.targets, prepared.cfg
    np.testing.assert_array_equal(control["z_all"], targets.numpy())
    assert control["z_all"].shape == (120, sum(descriptors.descriptor_sizes(cfg).values()))
    assert str(control["latent_source"]) == "descriptor targets atom_counts + distance_hist + pair_hist"
    assert not (tmp_path / "descriptors" / training.LAST).exists()
    message = expect_input_error(capsys, tr.main, ["--resume", "--descriptor-latents", "--out-dir",
                                                   str(tmp_path / "descriptors")])
    assert "nothing to resume" in message


def test_every_loss_group_is_in_the_epoch_line_and_switching_one_on_changes_the_loss(qm9_root, tmp_path):
    angles = "DESCRIPTOR_WEIGHTS={'atom_counts': 1.0, 'distance_hist': 1.0, 'pair_hist': 1.0, 'angle_hist': 0.5}"
    losses = {}
    for name, extra in (("plain", []), ("angles", ["--set", angles]),
                        ("denoise", ["--set", "DENOISE_WEIGHT=2.0"])):
        run_train(["--data-root", qm9_root, *SMALL, "--epochs", 1, "--out-dir", tmp_path / name, *extra])
        line = [line for line in (tmp_path / name / "train.log").read_text().splitlines() if "epoch    1/1" in line][0]
        losses[name] = dict(re.findall(r"(\w+) ([\d.]+)", line.split("[")[1].split("]")[0]))
        losses[name]["val"] = re.search(r"val ([\d.]+)", line).group(1)
    assert list(losses["plain"]) == ["atom_counts", "distance_hist", "pair_hist", "val"]
    assert list(losses["angles"]) == ["atom_counts", "distance_hist", "pair_hist", "angle_hist", "val"]
    assert list(losses["denoise"]) == ["atom_counts", "distance_hist", "pair_hist", "denoise", "val"]
    for name, weight, group in (("angles", 0.5, "angle_hist"), ("denoise", 2.0, "denoise")):
        groups = {key: float(value) for key, value in losses[name].items()}
        total = sum(value for key, value in groups.items() if key not in ("val", group)) + weight * groups[group]
        assert groups["val"] == pytest.approx(total, abs=2e-4)
        assert losses[name]["val"] != losses["plain"]["val"]
