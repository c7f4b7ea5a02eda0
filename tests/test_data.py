"""QM9 parsing, the cache, batching by index and the descriptor targets."""
import numpy as np
import pandas as pd
import pytest
import torch

import data
import descriptors
import qm9
from cli import resolve_config
from conftest import CH_BOND, HH_DISTANCE, METHANE_POS
from utils import InputError

QM9 = {"ATOM_TYPES": qm9.QM9_ATOM_TYPES}  # what ATOM_TYPES=None reads from the QM9 cache

WATER = ("['O','H','H']", "[[0.,0.,0.1173],[0.,0.7572,-0.4692],[0.,-0.7572,-0.4692]]")


def write_csv_parts(folder, rows_per_part):
    """qm9pack-like CSV parts; each row is (index, n_atoms, elements, xyz, homo_au)."""
    for name, rows in zip(qm9.QM9_CSV_FILES, rows_per_part):
        frame = pd.DataFrame(rows, columns=qm9.QM9_COLUMNS)
        frame["SMILES"] = "C"
        frame.to_csv(folder / name, index=False)
    return folder


def good_parts():
    return [[(1, 3, *WATER, -0.2)], [(2, 2, "['C','O']", "[[0.,0.,0.],[1.2*^-6,0.,1.128]]", -0.3)],
            [(3, 1, "['F']", "[[2.1997E-6,1.,0]]", -0.4)]]


def test_parses_mathematica_exponents_bare_dots_and_units(tmp_path):
    arrays = qm9.parse_qm9_csvs(write_csv_parts(tmp_path, good_parts()))
    assert arrays["z"].tolist() == [8, 1, 1, 6, 8, 9]
    assert arrays["n_atoms"].tolist() == [3, 2, 1]
    assert arrays["index"].tolist() == [1, 2, 3]
    assert arrays["pos"][4].tolist() == pytest.approx([1.2e-6, 0.0, 1.128], rel=1e-6)
    assert arrays["pos"][5, 0] == pytest.approx(2.1997e-6, rel=1e-6)
    assert arrays["homo_ev"].tolist() == pytest.approx([-0.2 * 27.211386246, -0.3 * 27.211386246,
                                                        -0.4 * 27.211386246])


@pytest.mark.parametrize("row, message", [
    ((2, 2, "['C','Xx']", "[[0.,0.,0.],[1.,0.,0.]]", -0.3), "unknown element symbols \\['Xx'\\]"),
    ((2, 0, "[]", "[]", -0.3), "no atoms \\(Index \\[2\\]\\)"),
    ((2, 2, "['C','O']", "[[0.,0.,0.],[1.,0.]]", -0.3), "XYZ_Ang does not match N_atoms \\(Index \\[2\\]\\)"),
    ((2, 2, "['C','O']", "[[0.,0.,0.],[1.,0.,abc]]", -0.3), "not a number"),
])
def test_bad_csv_rows_name_the_file_and_molecule(tmp_path, row, message):
    parts = good_parts()
    parts[1] = [row]
    with pytest.raises(InputError, match=message) as err:
        qm9.parse_qm9_csvs(write_csv_parts(tmp_path, parts))
    assert "qm9_part2.csv" in str(err.value)


def test_non_finite_coordinates_are_rejected(tmp_path):
    parts = good_parts()
    parts[2] = [(3, 1, "['F']", "[[nan,1.,0]]", -0.4)]
    with pytest.raises(InputError, match="non-finite coordinates \\(Index \\[3\\]\\)"):
        qm9.load_qm9(tmp_path / "root", csv_dir=write_csv_parts(tmp_path, parts))
    assert not (tmp_path / "root" / qm9.CACHE_NAME).exists()


def test_missing_csv_part_and_missing_columns(tmp_path):
    write_csv_parts(tmp_path, good_parts())
    (tmp_path / "qm9_part3.csv").unlink()
    with pytest.raises(InputError, match="qm9_part3.csv"):
        qm9.parse_qm9_csvs(tmp_path)
    pd.DataFrame({"Index": [1]}).to_csv(tmp_path / "qm9_part3.csv", index=False)
    with pytest.raises(InputError, match="qm9_part3.csv: cannot read QM9 columns"):
        qm9.parse_qm9_csvs(tmp_path)


def test_cache_is_written_once_and_reloaded(tmp_path):
    csv_dir = write_csv_parts(tmp_path, good_parts())
    built = qm9.load_qm9(tmp_path / "root", csv_dir=csv_dir)
    for part in qm9.QM9_CSV_FILES:
        (csv_dir / part).unlink()  # a second load must not need the CSVs
    loaded = qm9.load_qm9(tmp_path / "root")
    for key, dtype in qm9.CACHE_DTYPES.items():
        assert loaded[key].dtype == dtype
        np.testing.assert_array_equal(loaded[key], built[key])


def test_corrupt_or_incomplete_cache_is_an_input_error(tmp_path):
    cache = tmp_path / qm9.CACHE_NAME
    cache.write_bytes(b"PK\x03\x04 this is not a zip archive")
    with pytest.raises(InputError, match=f"{cache}: damaged QM9 cache"):
        qm9.load_qm9(tmp_path)
    np.savez(cache, z=np.zeros(3, np.uint8))
    with pytest.raises(InputError, match="missing arrays"):
        qm9.load_qm9(tmp_path)


def test_real_qm9_matches_the_published_facts(qm9_arrays):
    assert len(qm9_arrays["n_atoms"]) == 130_831
    assert len(qm9_arrays["z"]) == qm9_arrays["n_atoms"].sum() == 2_359_210
    assert qm9_arrays["n_atoms"].max() == 29
    assert sorted(np.unique(qm9_arrays["z"]).tolist()) == [1, 6, 7, 8, 9]
    assert qm9_arrays["index"][0] == 1 and qm9_arrays["index"][-1] == 133_885
    assert qm9_arrays["homo_ev"].mean() == pytest.approx(-6.536, abs=0.005)
    assert qm9_arrays["homo_ev"].std() == pytest.approx(0.598, abs=0.005)
    methane = qm9_arrays["pos"][:5].astype(np.float64)  # Index 1 is CH4
    assert np.linalg.norm(methane[1:] - methane[0], axis=1) == pytest.approx([1.0919] * 4, abs=1e-3)


def test_seeded_subset(qm9_arrays):
    first = data.seeded_subset(qm9_arrays, 50, seed=0)
    again = data.seeded_subset(qm9_arrays, 50, seed=0)
    other = data.seeded_subset(qm9_arrays, 50, seed=1)
    np.testing.assert_array_equal(first["index"], again["index"])
    assert set(first["index"]) != set(other["index"])
    assert len(first["z"]) == first["n_atoms"].sum()
    qm9.validate_structures(first, "subset")
    for bad in (0, 130_832):
        with pytest.raises(InputError, match=f"max structures {bad}: expected 1..130831"):
            data.seeded_subset(qm9_arrays, bad, seed=0)


def test_a_size_cap_below_every_structure_names_the_cap(qm9_arrays):
    with pytest.raises(InputError, match="MAX_STRUCTURE_ATOMS=2: leaves out every structure; the smallest has 3 atoms"):
        data.drop_large_structures(qm9_arrays, 2)


def test_a_subset_larger_than_the_capped_dataset_names_the_cap(qm9_root):
    cfg = resolve_config({"DATA_ROOT": str(qm9_root), "MAX_STRUCTURE_ATOMS": 4, "MAX_STRUCTURES": 100})
    with pytest.raises(InputError, match=r"max structures 100: expected 1..\d+, the structures of at most "
                                         "MAX_STRUCTURE_ATOMS=4 atoms"):
        data.load_structures(cfg)


@pytest.mark.parametrize("elements, message", [
    (("Xx",), "HIST_ELEMENTS=('Xx',): 'Xx' is not an element symbol; expected symbols such as 'C' or 'Zn'"),
    (("h", "c"), "HIST_ELEMENTS=('h', 'c'): 'h' is not an element symbol (did you mean 'H'?)"),
    (("ZN",), "'ZN' is not an element symbol (did you mean 'Zn'?)"),
    (("C", "H", "C"), "HIST_ELEMENTS=('C', 'H', 'C'): lists ['C'] more than once; expected distinct elements"),
])
def test_hist_elements_name_the_unknown_symbol(elements, message):
    with pytest.raises(InputError) as error:
        data.check_dataset_settings(resolve_config({"HIST_ELEMENTS": elements}))
    assert message in str(error.value)


def test_gather_returns_the_molecules_asked_for(qm9_arrays):
    subset = data.seeded_subset(qm9_arrays, 40, seed=3)
    structures = data.Structures(subset, ("H", "C", "N", "O", "F"), "cpu")
    rows = torch.tensor([5, 0, 39, 5])
    z, pos, batch, cell = structures.gather(rows)
    assert cell is None
    first_atom = np.cumsum(subset["n_atoms"]) - subset["n_atoms"]
    for position, row in enumerate(rows.tolist()):
        atoms = slice(first_atom[row], first_atom[row] + subset["n_atoms"][row])
        np.testing.assert_array_equal(z[batch == position].numpy(), subset["z"][atoms])
        np.testing.assert_array_equal(pos[batch == position].numpy(), subset["pos"][atoms])


def test_elements_outside_atom_types_are_rejected(qm9_arrays):
    subset = data.seeded_subset(qm9_arrays, 2000, seed=0)
    with pytest.raises(InputError, match="atomic numbers \\[9\\] that ATOM_TYPES"):
        data.Structures(subset, ("H", "C", "N", "O"), "cpu")


def smeared(distances, value_range, bins):
    """The hand computation: a sum of Gaussians of width = bin spacing at each centre."""
    centres = np.linspace(*value_range, bins)
    width = (value_range[1] - value_range[0]) / (bins - 1)
    return np.array([sum(np.exp(-0.5 * ((d - c) / width) ** 2) for d in distances) for c in centres])


def test_descriptors_of_methane_match_a_hand_computation():
    cfg = resolve_config(QM9)
    types = torch.tensor([1, 0, 0, 0, 0])  # rows of ATOM_TYPES: C, H, H, H, H
    pos = torch.tensor(METHANE_POS, dtype=torch.float64)
    groups = descriptors.structure_descriptors(types, pos, torch.zeros(5, dtype=torch.long), 1, cfg)
    assert groups["atom_counts"].tolist() == [[4, 1, 0, 0, 0]]
    distances = [CH_BOND] * 4 + [HH_DISTANCE] * 6
    np.testing.assert_allclose(groups["distance_hist"][0].numpy(),
                               smeared(distances, cfg.DIST_HIST_RANGE, cfg.DIST_HIST_BINS), atol=1e-12)
    pair_hist = groups["pair_hist"][0].reshape(15, cfg.PAIR_HIST_BINS).numpy()
    hh, hc = smeared([HH_DISTANCE] * 6, *_pair_bins(cfg)), smeared([CH_BOND] * 4, *_pair_bins(cfg))
    np.testing.assert_allclose(pair_hist[0], hh, atol=1e-12)  # (H, H) is the first pair
    np.testing.assert_allclose(pair_hist[1], hc, atol=1e-12)  # (H, C) the second
    assert np.abs(pair_hist[2:]).max() == 0


def _pair_bins(cfg):
    return cfg.PAIR_HIST_RANGE, cfg.PAIR_HIST_BINS


def test_descriptors_of_water_in_a_batch_with_methane():
    cfg = resolve_config(QM9)
    water = np.array([[0.0, 0.0, 0.1173], [0.0, 0.7572, -0.4692], [0.0, -0.7572, -0.4692]])
    types = torch.tensor([3, 0, 0, 1, 0, 0, 0, 0])  # O H H, then methane
    pos = torch.tensor(np.vstack([water, METHANE_POS + 10.0]), dtype=torch.float64)
    batch = torch.tensor([0, 0, 0, 1, 1, 1, 1, 1])
    groups = descriptors.structure_descriptors(types, pos, batch, 2, cfg)
    oh, hh = np.linalg.norm(water[1] - water[0]), np.linalg.norm(water[1] - water[2])
    assert groups["atom_counts"][0].tolist() == [2, 0, 0, 1, 0]
    pair_hist = groups["pair_hist"][0].reshape(15, cfg.PAIR_HIST_BINS).numpy()
    np.testing.assert_allclose(pair_hist[0], smeared([hh], *_pair_bins(cfg)), atol=1e-12)
    np.testing.assert_allclose(pair_hist[3], smeared([oh, oh], *_pair_bins(cfg)), atol=1e-12)  # (H, O)
    np.testing.assert_allclose(groups["distance_hist"][0].numpy(),
                               smeared([oh, oh, hh], cfg.DIST_HIST_RANGE, cfg.DIST_HIST_BINS), atol=1e-12)
    assert groups["atom_counts"][1].tolist() == [4, 1, 0, 0, 0]


def test_descriptor_groups_are_checked():
    cfg = resolve_config({**QM9, "DESCRIPTOR_WEIGHTS": {"atom_counts": 1.0, "bond_angles": 1.0}})
    with pytest.raises(InputError, match="DESCRIPTOR_WEIGHTS keys"):
        descriptors.descriptor_sizes(cfg)


def test_target_standardization_floors_nearly_empty_columns():
    generator = torch.Generator().manual_seed(0)
    common = torch.randn(1000, 2, generator=generator) * 3.0
    rare = torch.zeros(1000, 1)
    rare[17] = 1.0  # one molecule in a thousand has this pair
    standardized, mean, std = descriptors.standardize_targets(torch.cat([common, rare], dim=1), torch.arange(1000),
                                                       {"distance_hist": 3})
    group_rms = float(torch.cat([common, rare], dim=1).std(dim=0).square().mean().sqrt())
    assert std[2] == pytest.approx(0.1 * group_rms)
    assert standardized[:, 2].abs().max() < 10
    np.testing.assert_allclose(standardized[:, :2].std(dim=0).numpy(), 1.0, rtol=1e-5)


WITH_ANGLES = {"DESCRIPTOR_WEIGHTS": {"atom_counts": 1.0, "angle_hist": 1.0}}


def angle_rows(groups, cfg):
    """The angle histogram of one molecule as (centre type, neighbour pair, bins)."""
    return groups["angle_hist"][0].reshape(5, 15, cfg.ANGLE_HIST_BINS).numpy()


def test_angle_targets_of_methane_and_water_match_a_hand_computation():
    cfg = resolve_config({**QM9, **WITH_ANGLES})
    bins = (cfg.ANGLE_HIST_RANGE, cfg.ANGLE_HIST_BINS)
    tetrahedral = np.degrees(np.arccos(-1 / 3))  # 109.47: the six H-C-H angles of methane
    methane = descriptors.structure_descriptors(torch.tensor([1, 0, 0, 0, 0]),
                                                torch.tensor(METHANE_POS, dtype=torch.float64),
                                         torch.zeros(5, dtype=torch.long), 1, cfg)
    rows = angle_rows(methane, cfg)
    np.testing.assert_allclose(rows[1, 0], smeared([tetrahedral] * 6, *bins), atol=1e-9)  # centre C, pair (H, H)
    rows[1, 0] = 0
    assert np.abs(rows).max() == 0  # hydrogens bond to nothing else: H-H is 1.78 Angstrom

    water = np.array([[0.0, 0.0, 0.1173], [0.0, 0.7572, -0.4692], [0.0, -0.7572, -0.4692]])
    u, v = water[1] - water[0], water[2] - water[0]
    hoh = np.degrees(np.arccos(u @ v / np.linalg.norm(u) / np.linalg.norm(v)))  # 104.5
    groups = descriptors.structure_descriptors(torch.tensor([3, 0, 0]), torch.tensor(water),
                                               torch.zeros(3, dtype=torch.long),
                                        1, cfg)
    rows = angle_rows(groups, cfg)
    np.testing.assert_allclose(rows[3, 0], smeared([hoh], *bins), atol=1e-9)  # centre O, pair (H, H)
    rows[3, 0] = 0
    assert np.abs(rows).max() == 0
    assert hoh == pytest.approx(104.5, abs=0.1)


def test_angle_targets_resolve_the_element_triplet():
    """Methanol-like: C bonded to O and three H; O bonded to C and H. Each angle lands in its triplet row."""
    cfg = resolve_config({**QM9, **WITH_ANGLES})
    pos = torch.tensor([[0.0, 0.0, 0.0], [1.43, 0.0, 0.0], [1.75, 0.9, 0.0], [-0.36, 1.03, 0.0],
                        [-0.36, -0.51, 0.89], [-0.36, -0.51, -0.89]], dtype=torch.float64)
    types = torch.tensor([1, 3, 0, 0, 0, 0])  # C O H H H H
    rows = angle_rows(descriptors.structure_descriptors(types, pos, torch.zeros(6, dtype=torch.long), 1, cfg), cfg)
    counts = rows.sum(axis=2) / rows.sum(axis=2).max() * 3  # the H-C-H row holds three angles, the most
    expected = np.zeros((5, 15))
    expected[1, 0] = 3  # H-C-H
    expected[1, 3] = 3  # H-C-O: pair (H, O) is row 3
    expected[3, 1] = 1  # C-O-H: centre O, pair (H, C) is row 1
    np.testing.assert_allclose(counts, expected, atol=0.05)


def test_descriptors_invariant_to_rotation_reflection_translation_and_order():
    from e3nn import o3

    from conftest import random_molecules
    cfg = resolve_config({**QM9, "DESCRIPTOR_WEIGHTS": {"atom_counts": 1.0, "distance_hist": 1.0, "pair_hist": 1.0,
                                                 "angle_hist": 1.0}})
    z, pos, batch = random_molecules([7, 12, 5], torch.Generator().manual_seed(5))
    types = torch.searchsorted(torch.tensor([1, 6, 7, 8, 9]), z)  # rows of ATOM_TYPES
    reference = descriptors.structure_descriptors(types, pos, batch, 3, cfg)
    assert reference["angle_hist"].sum() > 0
    generator = torch.Generator().manual_seed(6)
    order = torch.randperm(len(z), generator=generator)
    order = order[torch.argsort(batch[order], stable=True)]  # shuffled atoms, molecules still contiguous
    for rotation in (o3.rand_matrix(dtype=torch.float64), -o3.rand_matrix(dtype=torch.float64)):
        moved = pos[order] @ rotation.T + torch.randn(3, generator=generator, dtype=torch.float64) * 5
        groups = descriptors.structure_descriptors(types[order], moved, batch[order], 3, cfg)
        for name, values in groups.items():
            np.testing.assert_allclose(values.numpy(), reference[name].numpy(), atol=1e-9, err_msg=name)


def test_bond_tolerance_decides_what_counts_as_a_bond():
    cfg = resolve_config({**QM9, **WITH_ANGLES, "BOND_TOLERANCE": 1.01})  # C-H is 1.09, 1.02 times the radii
    methane = descriptors.structure_descriptors(torch.tensor([1, 0, 0, 0, 0]), torch.tensor(METHANE_POS),
                                         torch.zeros(5, dtype=torch.long), 1, cfg)
    assert methane["angle_hist"].abs().max() == 0


def test_the_default_atom_budget_never_ends_a_qm9_batch_early(qm9_arrays):
    """QM9's largest molecules have 29 atoms: full batches of 64 and 256 stay under BATCH_MAX_ATOMS,
    so QM9 runs batch exactly as they did before the budget existed."""
    cfg = resolve_config(QM9)
    structures = data.Structures(qm9_arrays, qm9.QM9_ATOM_TYPES, "cpu")
    rows = torch.randperm(structures.num_molecules, generator=torch.Generator().manual_seed(0))
    for size in (cfg.ENC_BATCH_SIZE, cfg.EVAL_BATCH_SIZE):
        chunks = structures.batches(rows, size, cfg.BATCH_MAX_ATOMS)
        assert [len(chunk) for chunk in chunks] == [len(chunk) for chunk in torch.split(rows, size)]
        assert torch.equal(torch.cat(chunks), rows)
