"""CoRE MOF 2019: CIF parsing, the cache and its skips, bad input, and both scripts on a small
periodic dataset written in the wheel's layout."""
import io
import itertools
import tarfile

import gemmi
import numpy as np
import pandas as pd
import pytest
import torch

import coremof
import data
import latents
import qm9
import sampling_mlp_experiment as sm
import train_encoder_qm9 as tr
import training
from cli import resolve_config
from conftest import expect_input_error, run_train
from utils import InputError

CELL_KEYS = ("length_a", "length_b", "length_c", "angle_alpha", "angle_beta", "angle_gamma")


def cif(cell=(6.0, 6.0, 6.0, 90, 90, 90), sites=(("Zn", 0.1, 0.2, 0.3), ("O", 0.3, 0.2, 0.1)), ops=("x,y,z",),
        spacegroup="P 1"):
    """CIF text of one structure: cell parameters, symmetry operations and (element, x, y, z) sites."""
    lines = ["data_test", *(f"_cell_{key} {value}" for key, value in zip(CELL_KEYS, cell)),
             f"_symmetry_space_group_name_H-M '{spacegroup}'", "loop_", "_symmetry_equiv_pos_as_xyz",
             *(f"'{op}'" for op in ops)]
    if sites:
        lines += ["loop_", "_atom_site_label", "_atom_site_type_symbol", "_atom_site_fract_x", "_atom_site_fract_y",
                  "_atom_site_fract_z", *(f"{el}{i} {el} {x} {y} {z}" for i, (el, x, y, z) in enumerate(sites))]
    return "\n".join(lines) + "\n"


def random_framework(seed, num_atoms):
    """CIF text of a random crystal: atoms at least 1.2 Angstrom apart in an oblique cell."""
    rng = np.random.default_rng(seed)
    cell = (*rng.uniform(5.5, 7.5, 3), *rng.uniform(80, 100, 3))
    lattice = np.array(gemmi.UnitCell(*cell).orth.mat).T
    fractional = []
    while len(fractional) < num_atoms:
        candidate = rng.random(3)
        images = np.array(list(itertools.product((-1, 0, 1), repeat=3)))
        if all(np.linalg.norm(((candidate - f + images) @ lattice), axis=1).min() > 1.2 for f in fractional):
            fractional.append(candidate)
    elements = rng.choice(["H", "C", "O", "Zn"], num_atoms, p=[0.4, 0.3, 0.2, 0.1])
    return cif(tuple(round(v, 4) for v in cell),
               [(el, *np.round(f, 5)) for el, f in zip(elements, fractional)])


def write_wheel_data(folder, cifs, table):
    """`cifs` {name: text} as 2019-ASR.tar.xz and `table` (a frame with a filename column) as 2019-ASR.csv."""
    folder.mkdir(parents=True, exist_ok=True)
    with tarfile.open(folder / coremof.ARCHIVE, "w:xz") as tar:
        for name, text in cifs.items():
            payload = text.encode()
            member = tarfile.TarInfo(f"2019-ASR/{name}.cif")
            member.size = len(payload)
            tar.addfile(member, io.BytesIO(payload))
    table.to_csv(folder / coremof.TABLE, index=False)
    return folder


def property_table(names, seed=0):
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"filename": names, **{key: rng.uniform(1, 10, len(names)) for key in coremof.PROPERTY_UNITS},
                         "All_Metals": "Zn"})


def test_symmetry_operations_expand_the_unit_cell():
    z, pos, cell = coremof.parse_cif(cif(ops=("x,y,z", "-x,-y,-z"), spacegroup="P -1"))
    assert z.tolist() == [30, 30, 8, 8]
    np.testing.assert_allclose(cell, 6.0 * np.eye(3), atol=1e-12)
    np.testing.assert_allclose(pos, [[0.6, 1.2, 1.8], [-0.6, -1.2, -1.8], [1.8, 1.2, 0.6], [-1.8, -1.2, -0.6]],
                               atol=1e-12)


def test_the_wheels_first_cifs_parse_to_their_listed_atoms_and_cells():
    """The first 25 CIFs of the wheel (P1 files): every listed site once, the cell of the parameters;
    or a skip for overlapping sites."""
    parsed = 0
    for name, text in itertools.islice(coremof.cif_texts(coremof.wheel_data_dir() / coremof.ARCHIVE), 25):
        block = gemmi.cif.read_string(text).sole_block()
        try:
            z, pos, cell = coremof.parse_cif(text)
        except ValueError as err:
            assert "overlapping sites" in str(err), name
            continue
        parsed += 1
        assert len(z) == len(block.find_values("_atom_site_fract_x")), name
        lengths = [float(block.find_value(f"_cell_{key}")) for key in CELL_KEYS[:3]]
        np.testing.assert_allclose(np.linalg.norm(cell, axis=1), lengths, rtol=1e-6, err_msg=name)
        fractional = np.linalg.solve(cell.T, pos.T).T
        np.testing.assert_allclose(fractional[0], [float(block.find_values(f"_atom_site_fract_{axis}")[0])
                                                   for axis in "xyz"], atol=1e-6, err_msg=name)
    assert parsed >= 20


BAD_CIFS = {
    "malformed": ("data_x\n_cell_length_a 5\n_symmetry_space_group_name_H-M P 1\n", "not a readable CIF"),
    "empty": (cif(sites=()), "no atoms"),
    "flat": (cif(cell=(6, 6, 6, 90, 90, 180)), "singular cell"),
    "unknown": (cif(sites=(("Xx", 0.1, 0.1, 0.1),)), "unknown element 'Xx'"),
    "overlap": (cif(sites=(("C", 0.0, 0.1, 0.1), ("O", 0.99999, 0.1, 0.1))),
                "Angstrom apart, closer than 0.5: overlapping sites"),
}


def test_the_cache_keeps_good_structures_and_lists_each_skip_with_its_reason(tmp_path):
    cifs = {"good_b": random_framework(1, 5), "good_a": cif(ops=("x,y,z", "-x,-y,-z")), "orphan": cif(),
            **{name: text for name, (text, _) in BAD_CIFS.items()}}
    table = property_table(["good_a", "malformed", "empty", "flat", "unknown", "overlap", "good_b", "not_in_tar"])
    arrays = coremof.load_coremof(tmp_path / "root", write_wheel_data(tmp_path / "wheel", cifs, table))
    assert arrays["name"].tolist() == ["good_b", "good_a"]  # archive order
    assert arrays["n_atoms"].tolist() == [5, 4] and arrays["index"].tolist() == [6, 0]
    for key in coremof.PROPERTY_UNITS:
        np.testing.assert_array_equal(arrays[key], table[key].to_numpy()[[6, 0]])
    reasons = dict(zip(arrays["skipped_name"], arrays["skipped_reason"]))
    assert reasons.pop("orphan") == "no row in 2019-ASR.csv"
    assert set(reasons) == set(BAD_CIFS)
    for name, (_, reason) in BAD_CIFS.items():
        assert reason in reasons[name], name
    again = coremof.load_coremof(tmp_path / "root")  # read from the cache, the wheel folder unused
    for key, value in arrays.items():
        np.testing.assert_array_equal(again[key], value)


def test_bad_wheel_data_stops_with_one_line_and_writes_no_cache(tmp_path):
    root = tmp_path / "root"
    with pytest.raises(InputError, match="CoRE MOF files not found"):
        coremof.load_coremof(root, tmp_path / "nowhere")
    only_bad = write_wheel_data(tmp_path / "bad", {"flat": BAD_CIFS["flat"][0]}, property_table(["flat"]))
    with pytest.raises(InputError, match="no structure parsed"):
        coremof.load_coremof(root, only_bad)
    no_column = write_wheel_data(tmp_path / "nocol", {"a": cif()}, property_table(["a"]).drop(columns="LCD"))
    with pytest.raises(InputError, match="cannot read columns"):
        coremof.load_coremof(root, no_column)
    assert not (root / coremof.CACHE_NAME).exists()
    (root / coremof.CACHE_NAME).parent.mkdir(parents=True)
    (root / coremof.CACHE_NAME).write_bytes(b"PK\x03\x04 broken")
    with pytest.raises(InputError, match="delete it to rebuild the cache"):
        coremof.load_coremof(root)


@pytest.fixture(scope="module")
def mof_root(tmp_path_factory):
    """A DATA_ROOT holding the cache of 40 random frameworks of 3 to 14 atoms (one of 30, above the cap
    the tests set), LCD of one made NaN."""
    folder = tmp_path_factory.mktemp("mofs")
    sizes = [3 + seed % 12 for seed in range(39)] + [30]
    cifs = {f"MOF{seed:02d}": random_framework(seed, size) for seed, size in enumerate(sizes)}
    table = property_table(list(cifs))
    table.loc[5, "LCD"] = np.nan
    coremof.load_coremof(folder / "root", write_wheel_data(folder / "wheel", cifs, table))
    return folder / "root"


MOF_RUN = ["--dataset", "coremof", "--target", "AV_VF", "--epochs", 1, "--batch-size", 8,
           "--set", "MAX_STRUCTURE_ATOMS=20", "--set", "CUTOFF=4.0", "--set", "ENC_HIDDEN_IRREPS='8x0e + 8x1o'"]


@pytest.fixture(scope="module")
def mof_run(mof_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("mof_run")
    run_train(["--data-root", mof_root, "--out-dir", out, *MOF_RUN])
    return out


def test_the_encoder_trains_on_crystals_and_names_the_property(mof_run):
    with np.load(mof_run / latents.latents_name("coremof")) as npz:
        arrays = dict(npz)
    assert (str(arrays["dataset"]), str(arrays["target_name"]), str(arrays["target_unit"])) == \
        ("coremof", "AV_VF", "void fraction")
    assert arrays["z_all"].shape == (39, 128) and np.isfinite(arrays["z_all"]).all()
    assert "MOF39" not in arrays["structure_name"].tolist()  # 30 atoms: above MAX_STRUCTURE_ATOMS=20
    log = (mof_run / "train.log").read_text()
    assert "coremof: structures 39" in log and "1 structures above MAX_STRUCTURE_ATOMS=20 left out" in log
    assert "ATOM_TYPES H C O Zn" in log and "histogram classes H C O other" in log
    assert torch.load(mof_run / training.BEST_ENCODER)["hparams"]["pooling"] == "mean"


def test_the_sampling_script_reads_the_property_from_the_npz(mof_run, tmp_path):
    npz = mof_run / latents.latents_name("coremof")
    sm.main(["--latents", str(npz), "--out-dir", str(tmp_path / "sampling"), "--ns", "5", "10", "--seeds", "0",
             "1", "--strategies", "random", "kcenter", "--heads", "krr"])
    log = (tmp_path / "sampling" / "sampling.log").read_text()
    assert "target AV_VF (void fraction)" in log and "summary (MAE in void fraction;" in log
    assert len(pd.read_csv(tmp_path / "sampling" / "summary.csv")) == 4
    sm.main(["--latents", str(npz), "--out-dir", str(tmp_path / "select"), "--select", "kmeans", "--budget", "4"])
    to_label = pd.read_csv(tmp_path / "select" / "to_label.csv")
    assert list(to_label) == ["rank", "structure_index", "structure_name", "pool_row", "npz_row"]
    assert to_label["structure_name"].str.startswith("MOF").all()


def test_target_chooses_the_labels(mof_root, tmp_path):
    labels = {}
    for target in ("AV_VF", "PLD"):
        run_train(["--data-root", mof_root, "--out-dir", tmp_path / target, "--descriptor-latents", *MOF_RUN[:2],
                   "--target", target])
        with np.load(tmp_path / target / latents.latents_name("coremof")) as npz:
            labels[target] = npz["y_all"]
    assert not np.array_equal(labels["AV_VF"], labels["PLD"])


@pytest.mark.parametrize("flags, message", [
    (["--target", "LCD"], "TARGET LCD is NaN for structures ['MOF05']"),
    (["--target", "homo"], "TARGET='homo': dataset coremof has no such property; expected one of ['LCD',"),
    (["--dataset", "crystals"], "DATASET='crystals': expected one of ['qm9', 'coremof'] or the path of a structure file"),
    (["--set", "ATOM_TYPES=('H', 'C', 'O')"], "atomic numbers [30] that ATOM_TYPES ('H', 'C', 'O') lacks"),
    (["--set", "HIST_ELEMENTS=('H', 'Q')"], "HIST_ELEMENTS=('H', 'Q'): 'Q' is not an element symbol"),
])
def test_bad_settings_for_crystals_are_one_line_errors(mof_root, tmp_path, capsys, flags, message):
    out = tmp_path / "run"
    argv = ["--data-root", str(mof_root), "--out-dir", str(out), "--dataset", "coremof", "--target", "AV_VF", *flags]
    assert message in expect_input_error(capsys, tr.main, argv)
    assert not out.exists()


def test_dataset_atom_types_default_to_the_elements_of_the_data(mof_root, qm9_arrays):
    assert data.dataset_atom_types(None, qm9_arrays) == qm9.QM9_ATOM_TYPES
    mofs = data.load_dataset(resolve_config({"DATA_ROOT": str(mof_root), "DATASET": "coremof", "TARGET": "PLD"}))
    assert data.dataset_atom_types(None, mofs) == ("H", "C", "O", "Zn")
    assert data.dataset_atom_types(("C", "H"), mofs) == ("C", "H")
