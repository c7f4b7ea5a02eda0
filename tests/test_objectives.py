"""The pooling setting, masked atoms and per-atom targets: each changes behaviour, keeps the latent's
symmetries (float64), and bad names stop a run with one line and no folder."""
import atom_targets
import numpy as np
import pytest
import torch

import data
import descriptors
import train_encoder_qm9 as tr
import training
from cli import resolve_config
from conftest import expect_input_error, random_molecules, random_motions, relative_error
from models import MASK_Z, EquivGNNEncoder, moments
from utils import InputError

QM9_TYPES = ("H", "C", "N", "O", "F")
TYPES = ("H", "C", "O", "Zn")  # a crystal's: one metal, the rest organic
SKEWED_CELL = [[4.0, 0, 0], [2.9, 3.5, 0], [-1.4, 1.1, 4.2]]


def random_crystal(num_atoms, seed):
    """Random fractional positions in SKEWED_CELL: (z (n,), pos (n, 3), cell (3, 3)), float64."""
    generator = torch.Generator().manual_seed(seed)
    cell = torch.tensor(SKEWED_CELL, dtype=torch.float64)
    pos = torch.rand(num_atoms, 3, generator=generator, dtype=torch.float64) @ cell
    return torch.tensor([1, 6, 8, 30])[torch.randint(4, (num_atoms,), generator=generator)], pos, cell


def encode(encoder, z, pos, cell):
    return encoder(z, pos, torch.zeros(len(z), dtype=torch.long), cell[None])


def molecule_encoder(**overrides):
    cfg = resolve_config({"ATOM_TYPES": QM9_TYPES, "CUTOFF": 3.0, "LATENT_DIM": 16, **overrides})
    torch.manual_seed(0)
    return EquivGNNEncoder(**training.encoder_hparams(cfg, avg_num_neighbors=8.0, periodic=False)).double().eval()


def crystal_encoder(**overrides):
    cfg = resolve_config({"ATOM_TYPES": TYPES, "DATASET": "coremof", "TARGET": "AV_VF", "CUTOFF": 3.0,
                          "ENC_HIDDEN_IRREPS": "8x0e + 8x1o + 8x1e", "LATENT_DIM": 16, **overrides})
    torch.manual_seed(0)
    return EquivGNNEncoder(**training.encoder_hparams(cfg, avg_num_neighbors=10.0, periodic=True)).double().eval()


@pytest.fixture(scope="module")
def molecules():
    return random_molecules([7, 12, 3, 9], torch.Generator().manual_seed(5))


# --- pooling -----------------------------------------------------------------------

def test_auto_pooling_is_todays_choice_by_dataset():
    assert molecule_encoder().pooling == "sum" and crystal_encoder().pooling == "mean"
    assert molecule_encoder(LATENT_POOLING="moments").pooling == "moments"
    assert crystal_encoder(LATENT_POOLING="sum").pooling == "sum"


def test_pooling_setting_changes_the_latent(molecules):
    z, pos, batch = molecules
    latents = {name: molecule_encoder(LATENT_POOLING=name)(z, pos, batch) for name in ("sum", "mean", "moments")}
    assert all(latent.shape == (4, 16) for latent in latents.values())
    assert not torch.allclose(latents["sum"], latents["mean"])
    assert not torch.allclose(latents["mean"], latents["moments"])
    torch.testing.assert_close(molecule_encoder(LATENT_POOLING="auto")(z, pos, batch), latents["sum"], rtol=0, atol=0)


def test_moments_are_mean_std_and_max_per_structure():
    x = torch.tensor([[1.0, -2.0], [3.0, 0.0], [5.0, 4.0], [7.0, 1.0]], dtype=torch.float64)
    got = moments(x, torch.tensor([0, 0, 0, 1]))
    first = x[:3].numpy()
    expected = np.concatenate([first.mean(0), np.sqrt(first.var(0) + 1e-6), first.max(0)])
    np.testing.assert_allclose(got[0].numpy(), expected, rtol=1e-12)
    np.testing.assert_allclose(got[1].numpy(), [7.0, 1.0, 1e-3, 1e-3, 7.0, 1.0], rtol=1e-12)


def test_old_checkpoints_without_the_new_hyperparameters_still_load():
    encoder = molecule_encoder()
    hparams = training.encoder_hparams(resolve_config({"ATOM_TYPES": QM9_TYPES}), avg_num_neighbors=8.0,
                                       periodic=False)
    del hparams["mask_token"]
    old = EquivGNNEncoder(**hparams)
    assert old.embedding.weight.shape == (len(QM9_TYPES), 16)
    assert {k: v.shape for k, v in old.state_dict().items()} == \
        {k: v.shape for k, v in EquivGNNEncoder(**{**hparams, "latent_dim": 128}).state_dict().items()}
    assert encoder.latent_out.in_features == 16


@pytest.mark.parametrize("pooling", ["moments", "mean"])
def test_molecule_latent_is_invariant_under_every_pooling(molecules, pooling):
    z, pos, batch = molecules
    encoder = molecule_encoder(LATENT_POOLING=pooling)
    reference = encoder(z, pos, batch)
    for rotation, shift in random_motions(seed=7):  # the last one is improper: a reflection
        assert relative_error(encoder(z, pos @ rotation.T + shift, batch), reference) < 1e-10
    shuffled = torch.randperm(len(z), generator=torch.Generator().manual_seed(0))
    order = shuffled[torch.argsort(batch[shuffled], stable=True)]  # atoms shuffled inside each molecule
    assert not torch.equal(order, torch.arange(len(z)))
    assert relative_error(encoder(z[order], pos[order], batch[order]), reference) < 1e-10


@pytest.mark.parametrize("pooling", ["moments", "mean"])
def test_crystal_latent_is_invariant_and_a_supercell_keeps_it(pooling):
    encoder = crystal_encoder(LATENT_POOLING=pooling)
    z, pos, cell = random_crystal(7, seed=11)
    reference = encode(encoder, z, pos, cell)
    for rotation, shift in random_motions(seed=8):
        torch.testing.assert_close(encode(encoder, z, pos @ rotation.T + shift, cell @ rotation.T), reference,
                                   rtol=1e-10, atol=1e-10)
    order = torch.randperm(len(z), generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(encode(encoder, z[order], pos[order], cell), reference, rtol=1e-10, atol=1e-10)
    doubled = torch.diag(torch.tensor([2.0, 1.0, 1.0], dtype=torch.float64)) @ cell
    torch.testing.assert_close(encode(encoder, torch.cat([z, z]), torch.cat([pos, pos + cell[0]]), doubled),
                               reference, rtol=1e-10, atol=1e-10)


# --- masked atoms ------------------------------------------------------------------

class FakeStructures:
    def __init__(self, num_atoms):
        self.z = torch.ones(num_atoms, dtype=torch.long)
        self.pos = torch.zeros(num_atoms, 3)


def test_atom_mask_is_a_pure_function_of_seed_and_epoch():
    structures, cfg = FakeStructures(20_000), resolve_config({"MASK_WEIGHT": 1.0})
    assert training.atom_mask(structures, resolve_config(), training.TRAIN_NOISE, 0) is None
    first = training.atom_mask(structures, cfg, training.TRAIN_NOISE, 3)
    assert torch.equal(first, training.atom_mask(structures, cfg, training.TRAIN_NOISE, 3))
    assert not torch.equal(first, training.atom_mask(structures, cfg, training.TRAIN_NOISE, 4))
    assert not torch.equal(first, training.atom_mask(structures, cfg, training.VALIDATION_NOISE, 3))
    assert not torch.equal(first, training.atom_mask(structures, resolve_config({"MASK_WEIGHT": 1.0, "SEED": 1}),
                                                     training.TRAIN_NOISE, 3))
    assert abs(float(first.double().mean()) - cfg.MASK_FRACTION) < 0.01
    half = training.atom_mask(structures, resolve_config({"MASK_WEIGHT": 1.0, "MASK_FRACTION": 0.5}), 1, 3)
    assert abs(float(half.double().mean()) - 0.5) < 0.02


def test_masked_atom_embeds_as_its_own_token(molecules):
    z, pos, batch = molecules
    assert molecule_encoder().embedding.num_embeddings == len(QM9_TYPES)
    encoder = molecule_encoder(MASK_WEIGHT=1.0)
    assert encoder.embedding.num_embeddings == len(QM9_TYPES) + 1
    masked = z.clone()
    masked[0] = MASK_Z
    assert not torch.allclose(encoder(masked, pos, batch)[0], encoder(z, pos, batch)[0])
    torch.testing.assert_close(encoder(masked, pos, batch)[1:], encoder(z, pos, batch)[1:], rtol=0, atol=0)


@pytest.fixture(scope="module")
def small_structures(qm9_arrays):
    arrays = data.take_structures(qm9_arrays, np.arange(12))
    return arrays, data.Structures(arrays, QM9_TYPES, "cpu")


def model_and_losses(structures, draws, **overrides):
    cfg = resolve_config({"ATOM_TYPES": QM9_TYPES, "LATENT_DIM": 16, "DEC_HIDDEN_DIM": 16, **overrides})
    sizes = descriptors.descriptor_sizes(cfg)
    model = training.build_models(cfg, training.encoder_hparams(cfg, 10.0, periodic=False),
                                  training.decoder_hparams(cfg, sum(sizes.values())), torch.device("cpu"), None)[0]
    targets = torch.zeros(structures.num_molecules, sum(sizes.values()))
    return cfg, training.batch_losses(model, structures, targets, torch.arange(12), draws, sizes, 0.04)


def test_mask_weight_adds_an_element_loss(small_structures):
    _, structures = small_structures
    cfg = resolve_config({"MASK_WEIGHT": 0.5, "ATOM_TYPES": QM9_TYPES})
    assert training.loss_weights(cfg)["masked_atoms"] == 0.5
    assert "masked_atoms" not in training.loss_weights(resolve_config({"ATOM_TYPES": QM9_TYPES}))
    draws = training.epoch_draws(structures, cfg, training.TRAIN_NOISE, 0)
    assert draws.noise is None and draws.mask.any()
    losses = model_and_losses(structures, draws, MASK_WEIGHT=0.5)[1]
    assert 1.0 < float(losses["masked_atoms"].detach()) < 2.5  # 5 classes, untrained heads: about ln 5
    none_masked = training.epoch_draws(structures, cfg, training.TRAIN_NOISE, 0)
    none_masked.mask[:] = False
    assert float(model_and_losses(structures, none_masked, MASK_WEIGHT=0.5)[1]["masked_atoms"].detach()) == 0.0


# --- per-atom targets --------------------------------------------------------------

def test_other_elements_share_one_species():
    cfg = resolve_config({"ATOM_TYPES": ("H", "C", "O", "Zn", "Cu"), "HIST_ELEMENTS": ("H", "C", "N", "O")})
    assert atom_targets.species_numbers(cfg).tolist() == [1, 6, 8, 30, 30]
    assert atom_targets.species_numbers(resolve_config({"ATOM_TYPES": QM9_TYPES})).tolist() == [1, 6, 7, 8, 9]


@pytest.mark.parametrize("settings", [{"ATOM_DESCRIPTOR": "acsf"}, {"ATOM_DESCRIPTOR": "soap"}])
def test_atom_descriptors_are_invariant_and_a_supercell_repeats_its_cell(small_structures, settings):
    arrays = data.take_structures(small_structures[0], np.arange(3))
    cfg = resolve_config({"ATOM_TYPES": QM9_TYPES, **settings})
    values = atom_targets.build_atom_descriptors(arrays, cfg)
    assert values.shape == (arrays["n_atoms"].sum(), atom_targets.atom_target_width(cfg)) and values.std() > 0
    rotation, shift = next(random_motions(seed=3, count=1))
    moved = {**arrays, "pos": (arrays["pos"] @ rotation.numpy().T + shift.numpy()).astype(np.float32)}
    np.testing.assert_allclose(atom_targets.build_atom_descriptors(moved, cfg), values, rtol=1e-4, atol=1e-4)
    z, pos, cell = random_crystal(6, seed=4)
    crystal_cfg = resolve_config({"ATOM_TYPES": TYPES, **settings})
    unit = {"z": z.numpy().astype(np.uint8), "pos": pos.numpy().astype(np.float32), "n_atoms": np.array([6]),
            "cell": cell.numpy()[None]}
    supercell = {"z": np.concatenate([unit["z"]] * 2), "pos": np.concatenate([unit["pos"], unit["pos"] + unit[
        "cell"][0, 0].astype(np.float32)]), "n_atoms": np.array([12]),
        "cell": (np.diag([2.0, 1.0, 1.0]) @ cell.numpy())[None]}
    unit_values = atom_targets.build_atom_descriptors(unit, crystal_cfg)
    assert unit_values.std() > 0
    np.testing.assert_allclose(atom_targets.build_atom_descriptors(supercell, crystal_cfg),
                               np.concatenate([unit_values] * 2), rtol=1e-4, atol=1e-4)


def test_descriptor_settings_change_the_targets(small_structures):
    arrays = data.take_structures(small_structures[0], np.arange(2))
    cfg = {"ATOM_TYPES": QM9_TYPES}

    def built(**settings):
        return atom_targets.build_atom_descriptors(arrays, resolve_config({**cfg, **settings}))
    soap = built(ATOM_DESCRIPTOR="soap")
    assert soap.shape[1] != built(ATOM_DESCRIPTOR="acsf").shape[1]
    assert built(ATOM_DESCRIPTOR="soap", SOAP_N_MAX=3).shape[1] < soap.shape[1]
    assert built(ATOM_DESCRIPTOR="soap", SOAP_L_MAX=2).shape[1] < soap.shape[1]
    for name in ("soap", "acsf"):
        assert not np.allclose(built(ATOM_DESCRIPTOR=name, ATOM_DESCRIPTOR_CUTOFF=3.0), built(ATOM_DESCRIPTOR=name))


def test_targets_are_cached_once_by_settings_and_structures(small_structures, tmp_path, monkeypatch):
    arrays = data.take_structures(small_structures[0], np.arange(4))
    cfg = resolve_config({"ATOM_TYPES": QM9_TYPES, "DATA_ROOT": str(tmp_path)})
    values = atom_targets.load_atom_descriptors(arrays, cfg)
    (cache,) = tmp_path.glob("atom_targets_*.npz")
    monkeypatch.setattr(atom_targets, "build_atom_descriptors", lambda *args: pytest.fail("rebuilt"))
    np.testing.assert_array_equal(atom_targets.load_atom_descriptors(arrays, cfg), values)
    other_settings = resolve_config({**vars(cfg), "ATOM_DESCRIPTOR_CUTOFF": 4.0})
    other_structures = data.take_structures(small_structures[0], np.arange(1, 5))
    names = {atom_targets.cache_name(a, c) for a, c in [(arrays, cfg), (arrays, other_settings),
                                                          (other_structures, cfg)]}
    assert len(names) == 3
    cache.write_bytes(cache.read_bytes()[:200])
    with pytest.raises(InputError, match=f"^{cache}: damaged per-atom target cache .*; delete it to rebuild"):
        atom_targets.load_atom_descriptors(arrays, cfg)


def test_atom_target_weight_adds_a_standardized_per_atom_loss(small_structures, tmp_path):
    arrays, structures = small_structures
    cfg = resolve_config({"ATOM_TYPES": QM9_TYPES, "DATA_ROOT": str(tmp_path), "ATOM_TARGET_WEIGHT": 2.0})
    assert training.loss_weights(cfg)["atom_targets"] == 2.0
    assert "atom_targets" not in training.loss_weights(resolve_config({"ATOM_TYPES": QM9_TYPES}))
    train_atoms = structures.atoms_of(torch.arange(8))[0]
    structures.atom_targets = atom_targets.atom_targets(arrays, train_atoms, cfg, "cpu")
    assert structures.atom_targets.shape == (arrays["n_atoms"].sum(), atom_targets.atom_target_width(cfg))
    assert structures.atom_targets[train_atoms].mean(dim=0).abs().max() < 1e-4
    draws = training.epoch_draws(structures, cfg, training.TRAIN_NOISE)
    losses = model_and_losses(structures, draws, DATA_ROOT=str(tmp_path), ATOM_TARGET_WEIGHT=2.0)[1]
    assert float(losses["atom_targets"].detach()) > 0.1
    structures.atom_targets = None


def test_bad_names_stop_the_run_with_one_line_and_no_folder(capsys, tmp_path):
    out = tmp_path / "run"
    for setting, message in [
            ("LATENT_POOLING='median'", "LATENT_POOLING='median': expected one of ['auto', 'sum', 'mean', 'moments']"),
            ("ATOM_DESCRIPTOR='mbtr'", "ATOM_DESCRIPTOR='mbtr': expected one of ['soap', 'acsf']"),
            ("MASK_FRACTION=1.5", "MASK_FRACTION=1.5: expected a fraction of the atoms, in (0, 1]")]:
        got = expect_input_error(capsys, tr.main, ["--data-root", str(tmp_path), "--out-dir", str(out),
                                                   "--set", setting])
        assert message in got
        assert not out.exists()
