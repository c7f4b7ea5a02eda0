"""Every constant in configs.py changes what the package does: each test changes one and
watches the model, the targets or the outputs move. A new constant without an entry here fails."""
import numpy as np
import pandas as pd
import pytest
import torch

import adaptive
import cli
import descriptors
import latents
import models
import qm9
import sampling_mlp_experiment as sm
import selection
import train_encoder_qm9 as tr
import training
from cli import default_config, resolve_config
from conftest import random_molecules, run_train, write_synthetic_latents

ENCODER_MODEL = {"ATOM_TYPES": ("H", "C", "N", "O", "F", "S"), "ENC_HIDDEN_IRREPS": "8x0e + 8x1o",
                 "ENC_NUM_LAYERS": 2, "CUTOFF": 3.0, "NUM_RADIAL_BASIS": 4, "RADIAL_HIDDEN_DIM": 16, "LATENT_DIM": 32,
                 "LATENT_READOUT": "last"}
DESCRIPTORS = {"DESCRIPTOR_WEIGHTS": {"atom_counts": 1.0, "pair_hist": 1.0}, "DIST_HIST_RANGE": (1.0, 4.0),
               "DIST_HIST_BINS": 20, "PAIR_HIST_RANGE": (1.0, 2.5), "PAIR_HIST_BINS": 12, "HIST_ELEMENTS": ("H", "C")}
QM9_TYPES = {"ATOM_TYPES": qm9.QM9_ATOM_TYPES}  # ATOM_TYPES=None would read them from a dataset
ANGLES_ON = {"DESCRIPTOR_WEIGHTS": {"atom_counts": 1.0, "angle_hist": 1.0}}
ANGLE_DESCRIPTORS = {"BOND_TOLERANCE": 1.01, "ANGLE_HIST_RANGE": (90.0, 150.0), "ANGLE_HIST_BINS": 13}
ENCODER_RUN = {"ENC_LR": 3e-3, "ENC_BATCH_SIZE": 8, "ENC_EPOCHS": 2, "SEED": 1, "TRAIN_VAL_TEST_SPLIT": (0.6, 0.2, 0.2),
               "MAX_STRUCTURES": 50, "DESCRIPTOR_WEIGHTS": {"atom_counts": 5.0, "distance_hist": 1.0, "pair_hist": 1.0},
               "DEC_HIDDEN_DIM": 64, "DENOISE_WEIGHT": 1.0, "MAX_STRUCTURE_ATOMS": 12, "BATCH_MAX_ATOMS": 60}
SAMPLING_RUN = {"MLP_HIDDEN_DIM": 48, "MLP_LAYERS": 1, "MLP_LR": 3e-3, "MLP_EPOCHS": 2, "MLP_BATCH_SIZE": 8,
                "MLP_PATIENCE": 1, "SAMPLING_NS": [10, 20], "SAMPLING_SEEDS": [0, 2],
                "MLP_SEED_COUNT": 1,
                "SAMPLING_STRATEGIES": ["kcenter"], "KCENTER_STANDARDIZE": False, "HEAD": ["krr"],
                "KRR_WIDTHS": [3.0], "KRR_RIDGES": [0.5], "HEAD_TUNING": "validation", "HEAD_CV_FOLDS": 2}
SELECTION = {"KMEANS_ITERATIONS": 1, "TYPICLUST_K": 2, "TYPICLUST_MIN_CLUSTER_SIZE": 40, "HERDING_WIDTH": 0.3,
             "HERDING_SAMPLE": 50, "HYBRID_SWITCH": 10, "GP_WIDTH": 0.2, "GP_NOISE": 1.0,
             "GP_SCORE": "variance"}  # each changes the picks of the strategy that uses it
ADAPTIVE = {"ADAPTIVE_ROUNDS": [8, 30]}  # the picks after the first round
PRETRAINED = {"PRETRAINED_MODEL", "PRETRAINED_READOUT", "PRETRAINED_MIRROR_AVERAGE", "PRETRAINED_BATCH_SIZE",
              "PRETRAINED_CHUNK_SIZE", "PRETRAINED_WORKERS"}  # test_pretrained
DATASETS = {"DATASET", "TARGET", "TARGET_UNIT", "ASE_FORMAT"}  # tests/test_coremof.py, tests/test_structure_file.py
OBJECTIVES = {"LATENT_POOLING", "MASK_WEIGHT", "MASK_FRACTION", "ATOM_TARGET_WEIGHT", "ATOM_DESCRIPTOR",
              "ATOM_DESCRIPTOR_CUTOFF", "SOAP_N_MAX", "SOAP_L_MAX"}  # tests/test_objectives.py
TEACHER = {"TEACHER_WEIGHT", "TEACHER"}  # tests/test_teacher.py
ELSEWHERE = PRETRAINED | DATASETS | OBJECTIVES | TEACHER | {"DATA_ROOT", "OUTPUT_DIR", "EVAL_BATCH_SIZE", "ENC_LR_FACTOR",
                                                  "ENC_LR_PATIENCE", "MLP_VAL_SIZE", "ENC_COMPILE", "DIST_TIMEOUT_S",
                                                  "DENOISE_SIGMA", "SELECTION_DIM"}
# DIST_TIMEOUT_S: tests/test_distributed.py; SELECTION_DIM: tests/test_selection.py


def test_every_constant_has_a_behaviour_test():
    """ATOM_TYPES: here a list of six elements against QM9's five; tests/test_data.py: None against a list."""
    changed = {**ENCODER_MODEL, **DESCRIPTORS, **ANGLE_DESCRIPTORS, **ENCODER_RUN, **SAMPLING_RUN, **SELECTION,
               **ADAPTIVE}
    assert set(changed) | ELSEWHERE == set(vars(default_config()))
    for name, value in changed.items():
        assert value != getattr(default_config(), name), name


def encoder_output(cfg):
    torch.manual_seed(0)
    encoder = models.EquivGNNEncoder(**training.encoder_hparams(cfg, avg_num_neighbors=6.0, periodic=False))
    z, pos, batch = random_molecules([6, 9], torch.Generator().manual_seed(0))
    return encoder(z, pos.float(), batch).detach()


@pytest.mark.parametrize("name", ENCODER_MODEL)
def test_encoder_settings_change_the_latent(name):
    before = encoder_output(resolve_config(QM9_TYPES))
    after = encoder_output(resolve_config({**QM9_TYPES, name: ENCODER_MODEL[name]}))
    assert before.shape != after.shape or not torch.allclose(before, after)


def methane_descriptors(cfg):
    from conftest import METHANE_POS
    pos = torch.tensor(METHANE_POS)
    types = torch.tensor([1, 0, 0, 0, 0])
    return descriptors.structure_descriptors(types, pos, torch.zeros(5, dtype=torch.long), 1, cfg)


@pytest.mark.parametrize("name, value, base", [*((name, value, {}) for name, value in DESCRIPTORS.items()),
                                               *((name, value, ANGLES_ON) for name, value in ANGLE_DESCRIPTORS.items())])
def test_descriptor_settings_change_the_targets(name, value, base):
    before = torch.cat(list(methane_descriptors(resolve_config({**QM9_TYPES, **base})).values()), dim=1)
    after = torch.cat(list(methane_descriptors(resolve_config({**QM9_TYPES, **base, name: value})).values()), dim=1)
    assert before.shape != after.shape or not torch.allclose(before, after)


TINY_RUN = ["--max-molecules", 60, "--epochs", 1, "--batch-size", 16, "--set", "EVAL_BATCH_SIZE=32"]


def tiny_run(qm9_root, out, *extra):
    run_train(["--data-root", qm9_root, "--out-dir", out, *TINY_RUN, *extra])
    with np.load(out / latents.latents_name("qm9")) as npz:
        return dict(npz)


@pytest.fixture(scope="module")
def tiny_baseline(qm9_root, tmp_path_factory):
    return tiny_run(qm9_root, tmp_path_factory.mktemp("tiny"))


@pytest.mark.parametrize("name", ENCODER_RUN)
def test_training_settings_change_the_latents_or_split(name, qm9_root, tmp_path, tiny_baseline):
    changed = tiny_run(qm9_root, tmp_path, "--set", f"{name}={ENCODER_RUN[name]!r}")
    differs = [key for key in ("z_all", "idx_train", "idx_val") if changed[key].shape != tiny_baseline[key].shape
               or not np.array_equal(changed[key], tiny_baseline[key])]
    assert differs


def test_denoise_sigma_sets_the_size_of_the_displacements(qm9_root, tmp_path):
    written = [tiny_run(qm9_root, tmp_path / str(sigma), "--set", "DENOISE_WEIGHT=1.0", "--set",
                        f"DENOISE_SIGMA={sigma}")["z_all"] for sigma in (0.04, 0.2)]
    assert not np.array_equal(*written)


def test_eval_batch_size_sets_the_no_grad_batches(qm9_root, tmp_path, monkeypatch):
    sizes = []
    encode = models.EquivGNNEncoder.encode

    def recording_encode(self, z, pos, batch, cell=None):
        if not torch.is_grad_enabled():
            sizes.append(int(batch.max()) + 1)
        return encode(self, z, pos, batch, cell)

    monkeypatch.setattr(models.EquivGNNEncoder, "encode", recording_encode)
    tiny_run(qm9_root, tmp_path / "a", "--set", "EVAL_BATCH_SIZE=7")
    assert max(sizes) == 7 and sum(sizes) > 60


def test_compile_changes_how_the_layers_run_not_what_they_compute(qm9_root, tmp_path):
    from torch._dynamo.utils import counters
    one_layer = ("--set", "ENC_NUM_LAYERS=1", "--set", "ENC_HIDDEN_IRREPS=16x0e")  # short compile time
    eager = tiny_run(qm9_root, tmp_path / "eager", *one_layer)
    counters.clear()
    compiled = tiny_run(qm9_root, tmp_path / "compiled", *one_layer, "--set", "ENC_COMPILE=True")
    assert counters["stats"]["unique_graphs"] > 0
    np.testing.assert_allclose(compiled["z_all"], eager["z_all"], rtol=1e-4, atol=1e-4)


def test_data_root_and_output_dir_choose_the_folders(tmp_path, capsys, qm9_root):
    (tmp_path / qm9.CACHE_NAME).write_bytes(b"not a cache")
    with pytest.raises(SystemExit):
        cli.run_cli(lambda: tr.main(["--set", f"DATA_ROOT={str(tmp_path)!r}"]))
    assert f"{tmp_path / qm9.CACHE_NAME}: not an npz archive" in capsys.readouterr().err
    tr.main(["--set", f"DATA_ROOT={str(qm9_root)!r}", "--set", f"OUTPUT_DIR={str(tmp_path / 'runs')!r}",
             "--max-molecules", "40", "--epochs", "1"])
    assert [p.name[:8] for p in (tmp_path / "runs").iterdir()] == ["encoder_"]


def test_plateau_settings_decide_when_the_learning_rate_drops():
    def learning_rates(overrides):
        cfg = resolve_config(overrides)
        optimizer, scheduler = training.make_optimizer(cfg, [torch.nn.Parameter(torch.zeros(1))], torch.device("cpu"))
        rates = []
        for _ in range(8):
            scheduler.step(1.0)  # a validation loss that never improves
            rates.append(optimizer.param_groups[0]["lr"])
        return rates

    default = learning_rates({})
    assert default == [1e-3] * 6 + [5e-4] * 2
    assert learning_rates({"ENC_LR_PATIENCE": 2})[3] == 5e-4
    assert learning_rates({"ENC_LR_FACTOR": 0.1})[-1] == pytest.approx(1e-4)


def sampling_run(folder, latents, *extra):
    fixed = ["--ns", "10", "30", "--seeds", "0", "1", "--strategies", "random", "kcenter", "--heads", "mlp", "krr",
             "--set", "MLP_EPOCHS=10",
             "--set", "MLP_HIDDEN_DIM=32", "--set", "MLP_PATIENCE=3", "--set", "MLP_LR=1e-2"]
    sm.main(["--latents", str(latents), "--out-dir", str(folder), *fixed, *extra])
    return pd.read_csv(folder / "results_all.csv").drop(columns="fit_seconds"), (folder / "sampling.log").read_text()


@pytest.fixture(scope="module")
def skewed_latents(tmp_path_factory):
    """Latents whose dimensions have very different scales, so standardizing them moves the k-center picks."""
    folder = tmp_path_factory.mktemp("latents")
    z = np.random.default_rng(0).normal(size=(600, 16)).astype(np.float32) * np.logspace(-2, 2, 16, dtype=np.float32)
    return write_synthetic_latents(folder / "latents.npz", z_all=z)


@pytest.fixture(scope="module")
def sampling_baseline(tmp_path_factory, skewed_latents):
    return sampling_run(tmp_path_factory.mktemp("sampling"), skewed_latents)


@pytest.mark.parametrize("name", SAMPLING_RUN)
def test_sampling_settings_change_the_results(name, tmp_path, skewed_latents, sampling_baseline):
    value = SAMPLING_RUN[name]
    changed, _ = sampling_run(tmp_path, skewed_latents, "--set", f"{name}={value!r}")
    assert changed.shape != sampling_baseline[0].shape or not changed.equals(sampling_baseline[0])


def test_mlp_val_size_sets_the_early_stopping_subset(tmp_path, skewed_latents, sampling_baseline):
    _, log = sampling_run(tmp_path, skewed_latents, "--set", "MLP_VAL_SIZE=25")
    assert " val 25," in log
    assert " val 90," in sampling_baseline[1]  # all of the 90 validation molecules


@pytest.mark.parametrize("name", SELECTION)
def test_selection_settings_change_the_picks(name):
    z = torch.randn(400, 4, generator=torch.Generator().manual_seed(0)) * torch.tensor([1.0, 1.0, 3.0, 0.3])
    strategy = {"KMEANS": "kmeans", "TYPICLUST": "typiclust", "HERDING": "herding", "HYBRID": "hybrid",
                "GP": "gp_variance"}[name.split("_")[0]]
    picks = {}
    for cfg in (resolve_config(), resolve_config({name: SELECTION[name]})):
        select = selection.Selector(z, cfg)
        picks[len(picks)] = torch.cat([select(strategy, n, seed=1) for n in (8, 30)]).tolist()
    assert picks[0] != picks[1]


def test_adaptive_rounds_change_the_picks():
    """Rounds of 8 then 30 against 10 then 28 (the default's 1,000 picks need a larger pool): the first 8
    picks agree, and the kernel refitted after them moves the later ones."""
    z = torch.randn(400, 4, generator=torch.Generator().manual_seed(0))
    y = torch.sin(2 * z[:, 0]) + z[:, 1] ** 2
    picks = [adaptive.adaptive_selection(z, y, 1, resolve_config(rounds))[0].tolist()
             for rounds in ({"ADAPTIVE_ROUNDS": [10, 28]}, ADAPTIVE)]
    assert picks[0][:8] == picks[1][:8] and picks[0] != picks[1]
