"""A distilled student: the teacher's per-atom targets are the embedder's own per-atom features (for
molecules and crystals), cached once per structures and teacher, standardized on training atoms; their
loss changes the weights and keeps the latent's symmetries (float64); bad input is one line and no
folder. Skipped without sevenn, as tests/test_pretrained.py is."""
import importlib.util
import re

import numpy as np
import pytest
import torch

import data
import latents
import pretrained
import teacher_targets
import train_encoder_qm9 as tr
import training
from cli import resolve_config
from conftest import expect_input_error, random_motions, relative_error, run_train
from utils import InputError

needs_sevenn = pytest.mark.skipif(importlib.util.find_spec("sevenn") is None,
                                  reason="optional: pip install -r requirements-pretrained.txt")
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning")

QM9_TYPES = ("H", "C", "N", "O", "F")
FLOAT16_TOLERANCE = {"rtol": 1e-3, "atol": 1e-3}  # a float16 rounds to 2^-11 of its magnitude


@pytest.fixture(scope="module")
def molecules(qm9_arrays):
    return data.seeded_subset(qm9_arrays, 6, seed=3)


def teacher_config(data_root, **overrides):
    return resolve_config({"ATOM_TYPES": QM9_TYPES, "DATA_ROOT": str(data_root), "TEACHER_WEIGHT": 1.0, **overrides})


@pytest.fixture(scope="module")
def sevennet():
    return pretrained.load_embedder("sevennet-0", "all", "cpu")


@needs_sevenn
def test_targets_are_the_embedders_per_atom_features_and_their_mean_the_export(molecules, sevennet, tmp_path):
    cfg = teacher_config(tmp_path)
    values = teacher_targets.load_teacher_features(molecules, cfg, "cpu")
    assert values.shape == (molecules["n_atoms"].sum(), sevennet.dim) and values.dtype == np.float16
    structures = data.Structures(molecules, QM9_TYPES, "cpu")
    for row in range(structures.num_molecules):
        atoms = structures.atoms_of(torch.tensor([row]))[0]
        z, pos, batch, _ = structures.gather(torch.tensor([row]))
        features, _ = sevennet.atom_features(z, pos, batch, 1)
        np.testing.assert_allclose(values[atoms.numpy()], features.numpy(), **FLOAT16_TOLERANCE)
        assert torch.equal(pretrained.mean_over_atoms(features, batch, 1).float(), sevennet(z, pos, batch, 1)[0])
    train_atoms = structures.atoms_of(torch.arange(4))[0]
    standardized = teacher_targets.teacher_targets(molecules, train_atoms, cfg, "cpu")
    assert standardized.dtype == torch.float32 and standardized.shape == values.shape
    assert standardized[train_atoms].mean(dim=0).abs().max() < 1e-4
    assert standardized[train_atoms].std(dim=0).max() < 1.0 + 1e-4  # at most 1: a floored std only shrinks it


@needs_sevenn
def test_a_crystals_targets_repeat_in_its_supercell(sevennet):
    from ase.build import bulk
    crystal = bulk("NaCl", "rocksalt", a=5.64)
    crystal.rattle(0.05, seed=0)
    cfg = resolve_config({"ATOM_TYPES": ("Na", "Cl"), "TEACHER_WEIGHT": 1.0})

    def features(atoms):
        arrays = {"z": atoms.numbers.astype(np.uint8), "pos": atoms.positions.astype(np.float32),
                  "n_atoms": np.array([len(atoms)]), "cell": atoms.cell.array[None]}
        return teacher_targets.build_teacher_features(arrays, cfg, sevennet, "cpu").astype(np.float32)

    unit = features(crystal)
    assert unit.std() > 0
    np.testing.assert_allclose(features(crystal.repeat((2, 1, 1))), np.concatenate([unit] * 2), **FLOAT16_TOLERANCE)


@needs_sevenn
def test_each_teacher_is_cached_once_and_a_damaged_cache_is_named(molecules, tmp_path, monkeypatch):
    cfg = teacher_config(tmp_path)
    values = teacher_targets.load_teacher_features(molecules, cfg, "cpu")
    other = teacher_targets.load_teacher_features(molecules, teacher_config(tmp_path, TEACHER="sevennet-l3i5"), "cpu")
    assert other.shape == values.shape and not np.allclose(other, values, atol=0.1)
    assert len(list(tmp_path.glob("teacher_targets_sevennet-l3i5_*.npz"))) == 1
    (cache,) = tmp_path.glob("teacher_targets_sevennet-0_*.npz")
    monkeypatch.setattr(teacher_targets, "build_teacher_features", lambda *args: pytest.fail("rebuilt"))
    np.testing.assert_array_equal(teacher_targets.load_teacher_features(molecules, cfg, "cpu"), values)
    cache.write_bytes(cache.read_bytes()[:200])
    with pytest.raises(InputError, match=f"^{cache}: damaged teacher target cache .*; delete it to rebuild"):
        teacher_targets.load_teacher_features(molecules, cfg, "cpu")


@needs_sevenn
def test_a_mirror_averaged_teachers_atoms_ignore_reflections(molecules):
    teacher = pretrained.load_embedder("sevennet-0", "all", "cpu", mirror_average=True)
    structures = data.Structures(molecules, QM9_TYPES, "cpu")
    z, pos, batch, _ = structures.gather(torch.arange(structures.num_molecules))
    mirror = list(random_motions(seed=5))[-1][0]  # an improper rotation
    features, _ = teacher.atom_features(z, pos, batch, structures.num_molecules)
    mirrored, _ = teacher.atom_features(z, (pos.double() @ mirror.T).float(), batch, structures.num_molecules)
    torch.testing.assert_close(mirrored, features, rtol=1e-5, atol=1e-5)
    assert "mirror-averaged" in teacher_targets.describe_teacher(teacher_config(".", PRETRAINED_MIRROR_AVERAGE=True))
    assert "mirror" not in teacher_targets.describe_teacher(teacher_config(".", PRETRAINED_MIRROR_AVERAGE=True,
                                                                           TEACHER="chgnet"))


@needs_sevenn
def test_an_element_the_teacher_lacks_is_named_before_anything_is_computed(tmp_path):
    radon = {"z": np.array([1, 86], dtype=np.uint8), "pos": np.array([[0, 0, 0], [0, 0, 2.0]], dtype=np.float32),
             "n_atoms": np.array([2]), "index": np.array([7])}
    with pytest.raises(InputError, match=r"structures hold atomic numbers \[86\] that sevennet-0 \(trained on 89 "
                                         r"elements, atomic numbers 1\.\.83, 89\.\.94\) lacks"):
        teacher_targets.load_teacher_features(radon, teacher_config(tmp_path, ATOM_TYPES=("H", "Rn")), "cpu")
    assert not list(tmp_path.iterdir())


TINY = ["--max-molecules", 40, "--epochs", 1, "--batch-size", 16, "--set", "ENC_NUM_LAYERS=2",
        "--set", "ENC_HIDDEN_IRREPS='8x0e + 8x1o'", "--set", "LATENT_DIM=16", "--set", "DEC_HIDDEN_DIM=32"]


def tiny_run(qm9_root, out, *extra):
    run_train(["--data-root", qm9_root, "--out-dir", out, *TINY, *extra])
    with np.load(out / latents.latents_name("qm9")) as npz:
        return npz["z_all"], str(npz["latent_source"])


@needs_sevenn
def test_the_teachers_loss_changes_the_weights_and_keeps_the_latent_invariant(qm9_root, qm9_arrays, tmp_path):
    plain, plain_source = tiny_run(qm9_root, tmp_path / "plain")
    student, source = tiny_run(qm9_root, tmp_path / "student", "--set", "TEACHER_WEIGHT=1.0")
    assert not np.allclose(student, plain, atol=1e-6)
    assert plain_source == "encoder after epoch 1"
    assert source == "package encoder distilled from sevennet-0 (all readout) after epoch 1"
    log = (tmp_path / "student" / "train.log").read_text()
    assert "per-atom targets teacher ready in" in log and re.search(r"\[[^]]* teacher [\d.]+\]", log)  # a loss group
    assert torch.load(tmp_path / "student" / training.LAST, weights_only=True)["teacher_head"] is not None
    encoder = training.load_encoder(tmp_path / "student" / training.BEST_ENCODER).double()
    structures = data.Structures(data.seeded_subset(qm9_arrays, 5, seed=1), QM9_TYPES, "cpu")
    z, pos, batch, _ = structures.gather(torch.arange(5))
    pos = pos.double()
    reference = encoder(z, pos, batch)
    for rotation, shift in random_motions(seed=9):  # the last one is a reflection
        assert relative_error(encoder(z, pos @ rotation.T + shift, batch), reference) < 1e-10
    order = torch.randperm(len(z), generator=torch.Generator().manual_seed(2))
    order = order[torch.argsort(batch[order], stable=True)]  # atoms shuffled within each molecule
    assert relative_error(encoder(z[order], pos[order], batch[order]), reference) < 1e-10


def test_an_unknown_teacher_stops_the_run_with_one_line_and_no_folder(capsys, tmp_path):
    message = expect_input_error(capsys, tr.main, ["--data-root", str(tmp_path), "--out-dir", str(tmp_path / "run"),
                                                   "--set", "TEACHER='mace-off'"])
    assert message == ("error: TEACHER='mace-off': unknown model; expected one of "
                       "['chgnet', 'sevennet-0', 'sevennet-l3i5']")
    assert not (tmp_path / "run").exists()


def test_a_missing_teacher_package_names_what_to_install(capsys, tmp_path, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "sevenn" else real(name, *a))
    teacher_targets.check_teacher(resolve_config())  # the teacher's loss is off: its package is not needed
    message = expect_input_error(capsys, tr.main, ["--data-root", str(tmp_path), "--out-dir", str(tmp_path / "run"),
                                                   "--set", "TEACHER_WEIGHT=1.0"])
    assert message == f"error: package sevenn is not installed (an optional dependency): {pretrained.INSTALL_HINT}"
    assert not (tmp_path / "run").exists()
