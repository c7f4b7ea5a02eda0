"""Same seed, same bits on the CPU, while other processes compete for every core."""
import importlib.util

import numpy as np
import pytest
import torch

import cli
import data
import latents
import qm9
import training
from conftest import assert_same_tensors, epoch_lines, run_train
from graphs import radius_graph
from models import EquivGNNEncoder


def encoder_gradients(encoder, inputs):
    encoder.zero_grad(set_to_none=True)
    encoder.encode_graph(*inputs).square().sum().backward()
    return {name: p.grad.clone() for name, p in encoder.named_parameters()}


def test_encoder_gradients_repeat_bit_for_bit(qm9_arrays, busy_cores):
    """Edges in random order, so that many threads add into the same atoms at once: a reduction
    whose order follows thread timing shows up here within a few repeats."""
    cfg = cli.resolve_config({"ATOM_TYPES": list(qm9.QM9_ATOM_TYPES)})
    structures = data.Structures(data.seeded_subset(qm9_arrays, 128, seed=0), cfg.ATOM_TYPES, "cpu")
    z, pos, batch, _ = structures.gather(torch.arange(128))
    edge_index = radius_graph(pos, batch, cfg.CUTOFF)
    edge_index = edge_index[:, torch.randperm(edge_index.shape[1], generator=torch.Generator().manual_seed(0))]
    torch.manual_seed(0)
    encoder = EquivGNNEncoder(**training.encoder_hparams(cfg, avg_num_neighbors=10.0, periodic=False))
    first = encoder_gradients(encoder, (z, pos, edge_index, batch))
    for repeat in range(5):
        assert_same_tensors(first, encoder_gradients(encoder, (z, pos, edge_index, batch)), f"repeat {repeat}")


def last_and_latents(run_dir):
    with np.load(run_dir / latents.latents_name("qm9")) as npz:
        return torch.load(run_dir / training.LAST, weights_only=True), npz["z_all"]


def assert_same_run(expected_dir, got_dir):
    (expected, expected_z), (got, got_z) = last_and_latents(expected_dir), last_and_latents(got_dir)
    assert got["epoch"] == expected["epoch"]
    for part in ("encoder", "decoder", *training.HEADS):
        if expected[part] is not None or got[part] is not None:
            assert_same_tensors(expected[part], got[part], part)
    for expected_state, got_state in zip(expected["optimizer"]["state"].values(), got["optimizer"]["state"].values()):
        assert_same_tensors(expected_state, got_state, "Adam state")
    np.testing.assert_array_equal(expected_z, got_z)


COMMON = ["--max-molecules", 300, "--batch-size", 32, "--set", "ENC_LR_PATIENCE=0"]


def test_same_seed_same_weights(qm9_root, tmp_path, busy_cores):
    for name in ("first", "second"):
        run_train(["--data-root", qm9_root, *COMMON, "--epochs", 3, "--out-dir", tmp_path / name])
    assert_same_run(tmp_path / "first", tmp_path / "second")


DENOISING = ["--set", "DENOISE_WEIGHT=1.0", "--set", "LATENT_READOUT='all'",
             "--set", "DESCRIPTOR_WEIGHTS={'atom_counts': 1.0, 'pair_hist': 1.0, 'angle_hist': 1.0}"]


PER_ATOM = ["--set", "MASK_WEIGHT=1.0", "--set", "ATOM_TARGET_WEIGHT=1.0", "--set", "LATENT_POOLING='moments'"]

# 100 molecules, not 300: computing the teacher's features takes most of the time on a busy CPU
TEACHER = pytest.param(["--max-molecules", 100, "--set", "TEACHER_WEIGHT=1.0"], id="teacher", marks=pytest.mark.skipif(
    importlib.util.find_spec("sevenn") is None, reason="optional: pip install -r requirements-pretrained.txt"))


@pytest.mark.parametrize("objective", [pytest.param([], id="descriptors"), pytest.param(DENOISING, id="denoising"),
                                       pytest.param(PER_ATOM, id="per-atom"), TEACHER])
def test_resume_reaches_the_same_weights_as_an_uninterrupted_run(qm9_root, tmp_path, busy_cores, objective):
    run_train(["--data-root", qm9_root, *COMMON, *objective, "--epochs", 4, "--out-dir", tmp_path / "straight"])
    run_train(["--data-root", qm9_root, *COMMON, *objective, "--epochs", 2, "--out-dir", tmp_path / "interrupted"])
    run_train(["--resume", "--epochs", 4, "--out-dir", tmp_path / "interrupted"])
    assert_same_run(tmp_path / "straight", tmp_path / "interrupted")
    straight = torch.load(tmp_path / "straight" / training.LAST, weights_only=True)
    resumed = torch.load(tmp_path / "interrupted" / training.LAST, weights_only=True)
    assert straight["optimizer"]["param_groups"][0]["lr"] == resumed["optimizer"]["param_groups"][0]["lr"]
    assert [int(m.group(1)) for m in epoch_lines(tmp_path / "interrupted")] == [1, 2, 3, 4]
