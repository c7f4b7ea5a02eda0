"""Periodic structures: the neighbour list against a brute-force supercell enumeration, batching
by atoms, and the symmetries of descriptors and latents of crystals, in float64."""
import itertools
import math

import numpy as np
import pytest
import torch
from e3nn import o3

import data
import descriptors
import graphs
import qm9
import training
from cli import resolve_config
from graphs import periodic_radius_graph
from models import EquivGNNEncoder

CUTOFF = 3.0
CELLS = {
    "cubic": [[5.0, 0, 0], [0, 5.0, 0], [0, 0, 5.0]],
    "skewed": [[4.0, 0, 0], [2.9, 3.5, 0], [-1.4, 1.1, 4.2]],
    "thinner than the cutoff": [[1.6, 0, 0], [0.3, 4.5, 0], [0.2, 0.7, 5.0]],
    "one atom's own images": [[2.2, 0, 0], [1.0, 2.4, 0], [0.4, -0.6, 2.6]],
}
TYPES = ("H", "C", "O", "Zn")  # CoRE MOF-like: one metal, the rest organic


def random_crystal(cell, num_atoms, seed):
    """Fractional positions drawn at random in `cell` (3, 3) float64: (z (n,), pos (n, 3), cell)."""
    generator = torch.Generator().manual_seed(seed)
    cell = torch.tensor(cell, dtype=torch.float64)
    pos = torch.rand(num_atoms, 3, generator=generator, dtype=torch.float64) @ cell
    z = torch.tensor([1, 6, 8, 30])[torch.randint(4, (num_atoms,), generator=generator)]
    return z, pos, cell


def brute_force_edges(pos, cell, cutoff):
    """Every (target, source, shift) closer than the cutoff, over enough cell shifts to reach it."""
    widths = torch.linalg.det(cell).abs() / torch.linalg.cross(cell[[1, 2, 0]], cell[[2, 0, 1]]).norm(dim=1)
    reach = [math.ceil(cutoff / float(width)) for width in widths]
    edges = set()
    for shift in itertools.product(*(range(-r, r + 1) for r in reach)):
        image = pos + torch.tensor(shift, dtype=pos.dtype) @ cell
        distance = (image[None, :, :] - pos[:, None, :]).norm(dim=2)  # (target, source)
        for target, source in (distance < cutoff).nonzero().tolist():
            if target != source or any(shift):
                edges.add((target, source, shift))
    return edges


@pytest.mark.parametrize("name", CELLS)
def test_neighbour_list_equals_a_brute_force_supercell_enumeration(name):
    z, pos, cell = random_crystal(CELLS[name], 7, seed=1)
    edge_index, offset = periodic_radius_graph(pos, torch.zeros(len(pos), dtype=torch.long), cell[None], CUTOFF)
    shifts = torch.linalg.solve(cell.T, offset.T).T.round().long()  # offset = shift @ cell
    found = {(t, s, tuple(shift)) for s, t, shift in zip(*edge_index.tolist(), shifts.tolist())}
    assert len(found) == edge_index.shape[1]  # no edge twice
    assert found == brute_force_edges(pos, cell, CUTOFF)
    vectors = pos[edge_index[0]] + offset - pos[edge_index[1]]
    assert vectors.norm(dim=1).max() < CUTOFF
    if name == "thinner than the cutoff":
        assert shifts[:, 0].abs().max() >= 2  # the cutoff spans two cell widths


def test_a_batch_of_crystals_gives_each_crystal_its_own_edges():
    crystals = [random_crystal(CELLS[name], n, seed) for seed, (name, n) in enumerate(zip(CELLS, (5, 3, 6, 2)))]
    pos = torch.cat([c[1] for c in crystals])
    batch = torch.cat([torch.full((len(c[1]),), i) for i, c in enumerate(crystals)])
    edge_index, offset = periodic_radius_graph(pos, batch, torch.stack([c[2] for c in crystals]), CUTOFF)
    first = 0
    for i, (_, alone_pos, alone_cell) in enumerate(crystals):
        alone, alone_offset = periodic_radius_graph(alone_pos, torch.zeros(len(alone_pos), dtype=torch.long),
                                                    alone_cell[None], CUTOFF)
        mine = batch[edge_index[1]] == i
        assert torch.equal(edge_index[:, mine] - first, alone)
        assert torch.equal(offset[mine], alone_offset)
        first += len(alone_pos)


def crystal_encoder(**overrides):
    cfg = resolve_config({"ATOM_TYPES": TYPES, "DATASET": "coremof", "TARGET": "AV_VF", "CUTOFF": CUTOFF,
                          "ENC_HIDDEN_IRREPS": "8x0e + 8x1o + 8x1e", "LATENT_DIM": 16, **overrides})
    torch.manual_seed(0)
    return EquivGNNEncoder(**training.encoder_hparams(cfg, avg_num_neighbors=10.0, periodic=True)).double().eval()


def encode(encoder, z, pos, cell):
    return encoder(z, pos, torch.zeros(len(z), dtype=torch.long), cell[None])


def test_crystal_latent_is_invariant_to_rotation_reflection_translation_atom_order_and_images():
    encoder = crystal_encoder()
    assert encoder.pooling == "mean"
    z, pos, cell = random_crystal(CELLS["skewed"], 9, seed=2)
    reference = encode(encoder, z, pos, cell)
    generator = torch.Generator().manual_seed(3)
    rotation = o3.angles_to_matrix(*(2 * math.pi * torch.rand(3, generator=generator, dtype=torch.float64)))
    reflection = -rotation
    order = torch.randperm(len(z), generator=generator)
    wrapped = pos + torch.randint(-2, 3, (len(z), 3), generator=generator).double() @ cell  # other images
    moved = {"rotation": (z, pos @ rotation.T, cell @ rotation.T),
             "reflection": (z, pos @ reflection.T, cell @ reflection.T),
             "translation": (z, pos + torch.tensor([0.7, -2.1, 5.3], dtype=torch.float64), cell),
             "atom order": (z[order], pos[order], cell),
             "atoms moved by lattice vectors": (z, wrapped, cell)}
    for name, (z_moved, pos_moved, cell_moved) in moved.items():
        torch.testing.assert_close(encode(encoder, z_moved, pos_moved, cell_moved), reference, rtol=1e-10,
                                   atol=1e-10, msg=name)


def test_a_supercell_has_the_descriptors_and_latent_of_its_unit_cell():
    """A cell is one choice of repeat unit: a 2x1x1 supercell has each atom's environment twice, so
    per-atom descriptors and the atom-averaged latent stay; a summed latent would double."""
    z, pos, cell = random_crystal(CELLS["skewed"], 6, seed=4)
    doubled = torch.diag(torch.tensor([2.0, 1.0, 1.0], dtype=torch.float64)) @ cell
    z2, pos2 = torch.cat([z, z]), torch.cat([pos, pos + cell[0]])
    cfg = resolve_config({"ATOM_TYPES": TYPES, "HIST_ELEMENTS": ("H", "C", "O"), "DESCRIPTOR_WEIGHTS": {
        "atom_counts": 1.0, "distance_hist": 1.0, "pair_hist": 1.0, "angle_hist": 1.0}, "BOND_TOLERANCE": 2.5})
    types = graphs.type_index_table(TYPES)
    unit = descriptors.structure_descriptors(types[z], pos, torch.zeros(6, dtype=torch.long), 1, cfg, cell[None])
    supercell = descriptors.structure_descriptors(types[z2], pos2, torch.zeros(12, dtype=torch.long), 1, cfg,
                                                  doubled[None])
    for name in unit:
        assert unit[name].abs().sum() > 0, name
        torch.testing.assert_close(supercell[name], unit[name], rtol=1e-10, atol=1e-12, msg=name)
    encoder = crystal_encoder()
    torch.testing.assert_close(encode(encoder, z2, pos2, doubled), encode(encoder, z, pos, cell), rtol=1e-10,
                               atol=1e-10)
    encoder.pooling = "sum"
    assert not torch.allclose(encode(encoder, z2, pos2, doubled), encode(encoder, z, pos, cell))


def test_periodic_pair_histogram_counts_each_pair_once_per_atom():
    """One H atom alone in a cubic cell of side 2: its six nearest images at 2 Angstrom are three
    pairs per atom (each pair belongs to two atoms), the twelve at 2 sqrt(2) six."""
    cfg = resolve_config({"ATOM_TYPES": ("H",), "DESCRIPTOR_WEIGHTS": {"distance_hist": 1.0},
                          "DIST_HIST_RANGE": (1.0, 3.0), "DIST_HIST_BINS": 201})
    cell = 2.0 * torch.eye(3, dtype=torch.float64)
    hist = descriptors.structure_descriptors(torch.zeros(1, dtype=torch.long), torch.zeros(1, 3, dtype=torch.float64),
                                      torch.zeros(1, dtype=torch.long), 1, cfg, cell[None])["distance_hist"][0]
    centres = torch.linspace(1.0, 3.0, 201, dtype=torch.float64)
    width = 0.01
    expected = sum(count * torch.exp(-0.5 * ((centres - d) / width) ** 2)
                   for count, d in ((3, 2.0), (6, 2 * math.sqrt(2))))
    torch.testing.assert_close(hist, expected, rtol=1e-9, atol=1e-9)


def test_batches_end_at_the_atom_budget():
    arrays = {"z": np.ones(40, dtype=np.uint8), "pos": np.zeros((40, 3), dtype=np.float32),
              "n_atoms": np.array([3, 5, 30, 1, 1])}
    structures = data.Structures(arrays, ("H",), "cpu")
    rows = torch.arange(5)
    sizes = [chunk.tolist() for chunk in structures.batches(rows, batch_size=4, max_atoms=8)]
    assert sizes == [[0, 1], [2], [3, 4]]  # 30 atoms alone, above the budget
    assert [chunk.tolist() for chunk in structures.batches(rows, batch_size=2, max_atoms=100)] == [[0, 1], [2, 3], [4]]


def test_histogram_classes_keep_hist_elements_and_pool_the_rest():
    names, class_of_type = descriptors.histogram_classes(("H", "C", "Zn", "O", "Cu"), ("H", "C", "N", "O"))
    assert names == ["H", "C", "O", "other"]
    assert class_of_type.tolist() == [0, 1, 3, 2, 3]
    names, class_of_type = descriptors.histogram_classes(qm9.QM9_ATOM_TYPES, ("H", "C", "N", "O", "F"))
    assert names == list(qm9.QM9_ATOM_TYPES) and class_of_type.tolist() == [0, 1, 2, 3, 4]  # QM9: no "other"
