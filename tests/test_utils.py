"""Splits, metrics, logging, plots, configs and safe output."""
import errno
import json
import os
import re
import shutil

import numpy as np
import pytest
import torch

import cli
import evaluation
import plots
import utils
from utils import InputError


def test_split_is_disjoint_covering_and_seeded():
    train, val, test = utils.train_val_test_split_indices(1001, (0.8, 0.1, 0.1), seed=7)
    assert (len(train), len(val), len(test)) == (801, 100, 100)
    joined = np.concatenate([train, val, test])
    assert joined.dtype == np.int64 and sorted(joined.tolist()) == list(range(1001))
    again = utils.train_val_test_split_indices(1001, (0.8, 0.1, 0.1), seed=7)
    other = utils.train_val_test_split_indices(1001, (0.8, 0.1, 0.1), seed=8)
    assert all(np.array_equal(a, b) for a, b in zip(again, (train, val, test)))
    assert not np.array_equal(other[0], train)


@pytest.mark.parametrize("ratios", [(0.8, 0.1, 0.2), (0.5, 0.5), (1.2, -0.1, -0.1)])
def test_split_rejects_ratios_that_are_not_fractions_of_one(ratios):
    with pytest.raises(InputError, match="TRAIN_VAL_TEST_SPLIT"):
        utils.train_val_test_split_indices(10, ratios, seed=0)


def test_metrics_match_numpy_for_arrays_and_tensors():
    rng = np.random.default_rng(0)
    y, p = rng.normal(size=200), rng.normal(size=200)
    expected = (np.mean(np.abs(y - p)), np.sqrt(np.mean((y - p) ** 2)),
                1 - np.sum((y - p) ** 2) / np.sum((y - y.mean()) ** 2))
    for pair in ((y, p), (torch.tensor(y), torch.tensor(p, dtype=torch.float32))):
        got = (evaluation.mae(*pair), evaluation.rmse(*pair), evaluation.r2(*pair))
        assert got == pytest.approx(expected, rel=1e-6)
    assert evaluation.r2(y, y) == 1.0 and evaluation.mae(y, y) == 0.0


def test_logger_rotates_its_file(tmp_path):
    log_file = tmp_path / "run.log"
    logger = utils.get_logger("rotation-test", log_file, max_bytes=2_000, backup_count=2)
    for i in range(200):
        logger.info("line %d with some padding to fill the file", i)
    assert (tmp_path / "run.log.1").exists() and (tmp_path / "run.log.2").exists()
    assert not (tmp_path / "run.log.3").exists()
    assert "line 199" in log_file.read_text()
    assert len(utils.get_logger("rotation-test", log_file).handlers) == 2  # no duplicated handlers


def test_set_seed_repeats_every_generator():
    def draw():
        return np.random.rand(), torch.rand(1).item(), __import__("random").random()
    utils.set_seed(5)
    first = draw()
    utils.set_seed(5)
    assert draw() == first


def test_plots_write_one_png_each(tmp_path):
    ys = {"a": [[1.0, 0.5, 0.3], [1.2, 0.6, 0.2]], "b": [[0.9, 0.4, 0.25]]}
    plots.save_learning_curves([10, 20, 50], {"mlp": ys, "krr": ys}, tmp_path / "curve.png", hline=(1.1, "mean"),
                               references={"mlp": {("older run", "a"): ([10, 50], [1.1, 0.35])}})
    rng = np.random.default_rng(0)
    pair = (rng.normal(size=50), rng.normal(size=50))
    plots.save_parity({"mlp": {"a": pair, "b": pair}, "krr": {"a": pair}}, tmp_path / "parity.png")
    plots.save_label_histograms(rng.normal(size=500), {"N = 10": {"a": rng.normal(size=20)}}, tmp_path / "hist.png")
    written = sorted(tmp_path.iterdir())
    assert [p.name for p in written] == ["curve.png", "hist.png", "parity.png"]
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in written)


def test_config_overrides_are_typed_and_unknown_keys_fail():
    cfg = cli.resolve_config(cli.parse_set_args(["ENC_LR=3e-4", "SAMPLING_NS=[5, 10]", "MAX_STRUCTURES=100",
                                                     "ENC_HIDDEN_IRREPS=8x0e+8x1o", "CUTOFF=4"]))
    assert (cfg.ENC_LR, cfg.SAMPLING_NS, cfg.MAX_STRUCTURES, cfg.ENC_HIDDEN_IRREPS, cfg.CUTOFF) == \
        (3e-4, [5, 10], 100, "8x0e+8x1o", 4.0)
    with pytest.raises(InputError, match="unknown config key 'ENC_LRR' \\(did you mean ENC_LR\\?\\)"):
        cli.resolve_config({"ENC_LRR": 1.0})
    with pytest.raises(InputError, match="ENC_EPOCHS='ten': expected int, like the default 100"):
        cli.resolve_config(cli.parse_set_args(["ENC_EPOCHS=ten"]))
    assert cli.resolve_config(cli.parse_set_args(["DATA_ROOT='/a b'"])).DATA_ROOT == "/a b"
    with pytest.raises(InputError, match="ENC_EPOCHS=2.5: expected int"):
        cli.resolve_config({"ENC_EPOCHS": 2.5})
    with pytest.raises(InputError, match="ENC_LR=-0.1: expected a positive number"):
        cli.resolve_config({"ENC_LR": -0.1})
    with pytest.raises(InputError, match=r"SEED=-1: expected a seed in 0\.\.4294967295"):
        cli.resolve_config({"SEED": -1})
    with pytest.raises(InputError, match=r"SAMPLING_SEEDS=-2: expected a seed in 0\.\.4294967295"):
        cli.resolve_config({"SAMPLING_SEEDS": [0, -2]})
    assert cli.resolve_config({"SEED": 2**32 - 1}).SEED == 2**32 - 1
    with pytest.raises(InputError, match="MLP_LR=nan: expected a finite number"):
        cli.resolve_config({"MLP_LR": float("nan")})
    with pytest.raises(InputError, match="MAX_STRUCTURES=0: expected a positive number"):
        cli.resolve_config({"MAX_STRUCTURES": 0})
    assert cli.resolve_config({"ENC_LR_PATIENCE": 0}).ENC_LR_PATIENCE == 0
    with pytest.raises(InputError, match="expected NAME=VALUE"):
        cli.parse_set_args(["ENC_LR"])


LIST_SETTINGS = sorted(name for name, value in vars(cli.default_config()).items()
                       if isinstance(value, (tuple, list, dict)))


@pytest.mark.parametrize("name", LIST_SETTINGS)
def test_list_settings_must_not_be_empty_except_hist_elements(name):
    empty = type(getattr(cli.default_config(), name))()
    if name in cli.MAY_BE_EMPTY:
        assert getattr(cli.resolve_config({name: empty}), name) == empty
    else:
        with pytest.raises(InputError, match=re.escape(f"{name}={empty!r}: expected one or more entries")):
            cli.resolve_config({name: empty})


def test_an_empty_atom_types_list_is_refused_while_none_stands_for_the_data():
    with pytest.raises(InputError, match=re.escape("ATOM_TYPES=[]: expected one or more entries")):
        cli.resolve_config({"ATOM_TYPES": []})
    assert cli.resolve_config({"ATOM_TYPES": None}).ATOM_TYPES is None


def test_config_round_trips_through_json():
    cfg = cli.resolve_config({"ATOM_TYPES": ["H", "C"], "ENC_EPOCHS": 7})
    again = cli.config_from_json(cli.config_json(cfg), "test")
    assert vars(again) == vars(cfg)
    assert again.ATOM_TYPES == ("H", "C")
    older = json.loads(cli.config_json(cfg))
    del older["DIST_TIMEOUT_S"]  # a run made before this setting existed
    assert vars(cli.config_from_json(json.dumps(older), "test")) == vars(cfg)
    with pytest.raises(InputError, match="test: config is list, expected a JSON object"):
        cli.config_from_json("[1]", "test")


def test_atomic_path_leaves_nothing_behind_on_error(tmp_path):
    target = tmp_path / "out.txt"
    with pytest.raises(RuntimeError):
        with utils.atomic_path(target) as tmp:
            open(tmp, "w").write("half")
            raise RuntimeError("crash while writing")
    assert list(tmp_path.iterdir()) == []
    utils.write_text(target, "whole")
    assert target.read_text() == "whole" and list(tmp_path.iterdir()) == [target]


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write into read-only folders")
def test_unwritable_output_directory(tmp_path):
    tmp_path.chmod(0o500)
    try:
        with pytest.raises(InputError, match="not writable"):
            cli.prepare_run_dir(tmp_path / "run")
    finally:
        tmp_path.chmod(0o700)


def test_output_directory_under_a_file_is_not_writable(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(InputError, match=f"output directory {tmp_path / 'file' / 'run'}: not writable"):
        cli.prepare_run_dir(tmp_path / "file" / "run")


def test_load_npz_names_what_the_file_really_is(tmp_path):
    np.savez(tmp_path / "good.npz", a=np.arange(3))
    assert utils.load_npz(tmp_path / "good.npz", "thing")["a"].tolist() == [0, 1, 2]
    np.save(tmp_path / "array.npy", np.arange(3))
    (tmp_path / "text.npz").write_text("a,b\n1,2\n")
    (tmp_path / "cut.npz").write_bytes((tmp_path / "good.npz").read_bytes()[:40])
    for name, message in (("missing.npz", "thing not found"), (".", "a folder, expected a thing"),
                          ("array.npy", "a single .npy array, expected a thing"),
                          ("text.npz", "not an npz archive (no zip header); expected a thing"),
                          ("cut.npz", "damaged thing")):
        with pytest.raises(InputError, match=re.escape(f"{tmp_path / name}: {message}")):
            utils.load_npz(tmp_path / name, "thing")


def test_run_folder_is_locked_and_cleaned(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / ".last.pt.99.tmp").write_bytes(b"half")
    with cli.run_folder(tmp_path / "run") as run:
        assert not list(run.iterdir())
        with pytest.raises(InputError, match="another run is writing into this folder now"):
            with cli.run_folder(run, resume=True):
                pass
        (run / "config.json").write_text("{}")
    with pytest.raises(InputError, match="already holds files of a run"):
        with cli.run_folder(tmp_path / "run"):
            pass
    with cli.run_folder(tmp_path / "run", resume=True):  # the lock went with the first run
        pass


def failed_run(out_dir, error=InputError("diverged"), resume=False, resumable=(), write=("config.json",)):
    """A run that writes `write` into its folder, then raises `error`."""
    with pytest.raises(type(error)):
        with cli.run_folder(out_dir, resume=resume, resumable=resumable) as run:
            for name in write:
                (run / name).write_text("x")
            raise error


def test_a_new_run_that_fails_removes_what_it_made_and_nothing_else(tmp_path):
    failed_run(tmp_path / "a" / "b" / "run")  # made with its parents: all three go
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(InputError):  # made with a parent that another run started to use meanwhile: it stays
        with cli.run_folder(tmp_path / "runs" / "new" / "run"):
            (tmp_path / "runs" / "sibling").mkdir()
            raise InputError("diverged")
    assert [p.name for p in (tmp_path / "runs").iterdir()] == ["sibling"]
    shutil.rmtree(tmp_path / "runs")
    (tmp_path / "mine").mkdir()  # a folder that was there before stays, empty again
    failed_run(tmp_path / "mine", write=("config.json", "train.log"))
    assert list((tmp_path / "mine").iterdir()) == []
    failed_run(tmp_path / "partial", write=("config.json", "last.pt"), resumable=["last.pt"])  # --resume continues it
    assert {p.name for p in (tmp_path / "partial").iterdir()} == {"config.json", "last.pt"}
    failed_run(tmp_path / "partial", resume=True, write=("train.log",))  # a resumed run's folder is kept
    assert {p.name for p in (tmp_path / "partial").iterdir()} == {"config.json", "last.pt", "train.log"}
    failed_run(tmp_path / "killed", error=KeyboardInterrupt())  # Ctrl-C: the files so far are complete
    assert [p.name for p in (tmp_path / "killed").iterdir()] == ["config.json"]
    with pytest.raises(InputError, match="already holds files of a run"):  # another run's folder is never touched
        with cli.run_folder(tmp_path / "killed"):
            pass
    assert [p.name for p in (tmp_path / "killed").iterdir()] == ["config.json"]


def test_a_read_only_output_folder_gets_one_message_from_both_scripts(capsys, tmp_path, monkeypatch):
    import sampling_mlp_experiment
    import train_encoder_qm9
    from conftest import expect_input_error, write_synthetic_latents
    latents = write_synthetic_latents(tmp_path / "latents.npz")

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(cli.tempfile, "TemporaryFile", read_only)
    messages = [expect_input_error(capsys, main, [*argv, "--out-dir", str(tmp_path / "out")]) for main, argv in (
        (train_encoder_qm9.main, []), (sampling_mlp_experiment.main, ["--latents", str(latents), "--ns", "10"]),
        (sampling_mlp_experiment.main, ["--latents", str(latents), "--select", "random", "--budget", "5"]))]
    assert messages == [f"error: output directory {tmp_path / 'out'}: not writable (Read-only file system)"] * 3
    assert not (tmp_path / "out").exists()


def test_ctrl_c_is_one_line_and_status_130(capsys):
    def interrupted():
        raise KeyboardInterrupt
    with pytest.raises(SystemExit) as exit_info:
        cli.run_cli(interrupted)
    assert exit_info.value.code == 130
    assert capsys.readouterr().err.startswith("error: interrupted;")
