"""A user's structure file as the dataset: molecules and crystals written with ASE to extended XYZ
and to an ASE database go through both scripts; labels, positions and names survive; unlabelled
pools go to --select and not to the experiment; the crystal latent is the same for a supercell;
every kind of bad file stops with one line and leaves no run folder or cache."""
import ase
import ase.db
import ase.io
from ase.calculators.singlepoint import SinglePointCalculator
import numpy as np
import pandas as pd
import pytest
import torch

import data
import sampling_mlp_experiment as sm
import structure_file
import training
from cli import resolve_config
from conftest import expect_input_error, run_train, write_synthetic_latents
from latents import load_latents
from models import EquivGNNEncoder

SMALL_MODEL = ["--set", "ENC_HIDDEN_IRREPS=8x0e + 4x1o", "--set", "LATENT_DIM=16", "--set", "ENC_NUM_LAYERS=2",
               "--set", "DEC_HIDDEN_DIM=32", "--set", "RADIAL_HIDDEN_DIM=16", "--set", "CUTOFF=3.0"]
SMALL_SAMPLING = ["--ns", "5", "10", "--seeds", "0", "1", "--strategies", "random", "kcenter", "--heads", "krr"]


def random_molecule(rng, position):
    """3 to 8 atoms of H, C, N, O at least 1 Angstrom apart, labelled "gap" and named."""
    points = []
    while len(points) < rng.integers(3, 9):
        candidate = rng.random(3) * 3.5
        if all(np.linalg.norm(candidate - p) > 1.0 for p in points):
            points.append(candidate)
    atoms = ase.Atoms(numbers=rng.choice([1, 6, 7, 8], len(points)), positions=np.array(points))
    atoms.info.update(gap=float(0.1 * atoms.numbers.sum() + 0.05 * rng.normal()), name=f"mol{position}")
    return atoms


def random_crystal(rng, position):
    """2 to 8 atoms on a jittered 2x2x2 grid of a skewed cell about 5 Angstrom wide (no two atoms or
    images closer than about 2 Angstrom), labelled "density" (atoms per 100 cubic Angstrom)."""
    cell = np.diag(rng.uniform(4.6, 5.4, 3)) + rng.uniform(-0.3, 0.3, (3, 3))
    grid = np.array([[i, j, k] for i in (0, 0.5) for j in (0, 0.5) for k in (0, 0.5)])
    fractions = grid[rng.choice(8, rng.integers(2, 9), replace=False)] + rng.uniform(-0.04, 0.04, (1, 3))
    atoms = ase.Atoms(numbers=rng.choice([1, 6, 8, 30], len(fractions)), scaled_positions=fractions, cell=cell,
                      pbc=True)
    atoms.info["density"] = 100 * len(atoms) / atoms.get_volume()
    return atoms


def structures(kind, count=30, seed=0):
    rng = np.random.default_rng(seed)
    make = random_molecule if kind == "molecules" else random_crystal
    return [make(rng, position) for position in range(count)]


def write_db(path, frames):
    """An ASE database; each structure's info becomes its key-value pairs."""
    with ase.db.connect(str(path)) as database:
        for atoms in frames:
            info, atoms.info = atoms.info, {}
            database.write(atoms, **info)
    return path


def train_and_sample(tmp_path, dataset, target):
    """The encoder for one epoch on `dataset`, then the experiment on its latents; the latents."""
    run_train(["--dataset", dataset, "--target", target, "--epochs", 1, "--data-root", tmp_path / "data",
               "--out-dir", tmp_path / "run", *SMALL_MODEL])
    latents = tmp_path / "run" / f"latents_{dataset.stem}.npz"
    sm.main(["--latents", str(latents), *SMALL_SAMPLING, "--out-dir", str(tmp_path / "sampling")])
    assert len(pd.read_csv(tmp_path / "sampling" / "results_all.csv")) == 2 * 2 * 2
    return load_latents(latents)


@pytest.mark.parametrize("kind, target", [("molecules", "gap"), ("crystals", "density")])
@pytest.mark.parametrize("suffix", ["extxyz", "db"])
def test_a_labelled_file_goes_through_both_scripts_with_its_labels_by_position(tmp_path, kind, target, suffix):
    frames = structures(kind)
    path = tmp_path / f"pool.{suffix}"
    if suffix == "db":
        write_db(path, [atoms.copy() for atoms in frames])
    else:
        ase.io.write(path, frames)
    latents = train_and_sample(tmp_path, path, target)
    assert latents["labelled"].all() and str(latents["target_unit"]) == "unknown"
    expected = np.array([atoms.info[target] for atoms in frames])
    np.testing.assert_allclose(latents["y_all"], expected[latents["structure_index"]], rtol=1e-12)
    if kind == "molecules":
        assert latents["structure_name"].tolist() == [f"mol{i}" for i in latents["structure_index"]]
    pooling = torch.load(tmp_path / "run" / "encoder_struct.pt", weights_only=True)["hparams"]["pooling"]
    assert pooling == ("mean" if kind == "crystals" else "sum")


def test_energy_from_the_calculator_and_target_unit_go_into_the_latents(tmp_path):
    frames = structures("molecules")
    for atoms in frames:
        atoms.info.pop("gap")
        atoms.calc = SinglePointCalculator(atoms, energy=-0.5 * len(atoms))
    ase.io.write(tmp_path / "pool.extxyz", frames)
    run_train(["--dataset", tmp_path / "pool.extxyz", "--target", "energy", "--epochs", 0, "--data-root",
               tmp_path / "data", "--out-dir", tmp_path / "run", "--set", "TARGET_UNIT=eV", *SMALL_MODEL])
    latents = load_latents(tmp_path / "run" / "latents_pool.npz")
    assert str(latents["target_unit"]) == "eV"
    np.testing.assert_array_equal(latents["y_all"], [-0.5 * len(frames[i]) for i in latents["structure_index"]])


def test_an_unlabelled_pool_selects_and_a_partly_labelled_one_warm_starts(tmp_path, capsys):
    frames = structures("molecules")
    for atoms in frames[::3]:
        atoms.info.pop("gap")
    ase.io.write(tmp_path / "pool.extxyz", frames)
    for target, run in (("gap", "partly"), ("homo", "none")):
        run_train(["--dataset", tmp_path / "pool.extxyz", "--target", target, "--epochs", 1, "--data-root",
                   tmp_path / "data", "--out-dir", tmp_path / run, *SMALL_MODEL])
    unlabelled = tmp_path / "none" / "latents_pool.npz"
    arrays = load_latents(unlabelled)
    assert not arrays["labelled"].any() and np.isnan(arrays["y_all"]).all()
    message = expect_input_error(capsys, sm.main, ["--latents", str(unlabelled), "--out-dir", str(tmp_path / "no")])
    assert "the experiment needs a homo label for every structure; 30 of 30 have none" in message
    partly = tmp_path / "partly" / "latents_pool.npz"
    message = expect_input_error(capsys, sm.main, ["--latents", str(partly), "--out-dir", str(tmp_path / "no")])
    assert "10 of 30 have none (structure_index 0, 3, 6, 9, 12, ...)" in message
    assert not (tmp_path / "no").exists()

    sm.main(["--latents", str(unlabelled), "--select", "kcenter", "--budget", "8", "--out-dir", str(tmp_path / "s1")])
    picks = pd.read_csv(tmp_path / "s1" / "to_label.csv")
    assert picks.columns.tolist() == ["rank", "structure_index", "structure_name", "pool_row", "npz_row"]
    assert (picks["structure_name"] == [f"mol{i}" for i in picks["structure_index"]]).all()

    arrays = load_latents(partly)
    labelled_pool = arrays["labelled"][arrays["idx_train"]]
    free = int((~labelled_pool).sum())
    sm.main(["--latents", str(partly), "--select", "random", "--budget", str(free), "--labelled", "from-latents",
             "--out-dir", str(tmp_path / "s2")])
    picked = pd.read_csv(tmp_path / "s2" / "to_label.csv")["structure_index"]
    assert sorted(picked) == sorted(arrays["structure_index"][arrays["idx_train"][~labelled_pool]])
    message = expect_input_error(capsys, sm.main, ["--latents", str(partly), "--select", "random", "--budget",
                                                   str(free + 1), "--labelled", "from-latents"])
    assert f"expected 1..{free}" in message


def test_from_latents_needs_the_latents_of_a_structure_file(tmp_path, capsys):
    path = write_synthetic_latents(tmp_path / "latents.npz")
    message = expect_input_error(capsys, sm.main, ["--latents", str(path), "--select", "random", "--budget", "3",
                                                   "--labelled", "from-latents", "--out-dir", str(tmp_path / "s")])
    assert "has no labelled key" in message and not (tmp_path / "s").exists()


def test_nan_labels_in_latents_need_the_labelled_key(tmp_path, capsys):
    y = np.full(600, np.nan)
    path = write_synthetic_latents(tmp_path / "latents.npz", y_all=y)
    assert "y_all has 600 NaN" in expect_input_error(capsys, load_latents, path)
    labelled = np.zeros(600, dtype=bool)
    labelled[0] = True
    path = write_synthetic_latents(tmp_path / "other.npz", y_all=y, labelled=labelled)
    assert "y_all has 1 NaN" in expect_input_error(capsys, load_latents, path)


def test_a_crystal_and_its_supercell_have_one_latent(tmp_path):
    crystal = structures("crystals", count=1, seed=3)[0]
    crystal.set_cell(np.diag([4.5, 5.0, 5.5]) + np.triu(np.full((3, 3), 0.25), 1), scale_atoms=False)
    crystal.set_positions(np.round(crystal.get_positions() * 4) / 4)  # quarter Angstroms: exact in float32
    ase.io.write(tmp_path / "pair.extxyz", [crystal, crystal.repeat((2, 1, 1))])
    cfg = resolve_config({"DATASET": str(tmp_path / "pair.extxyz"), "TARGET": "density", "DATA_ROOT": str(tmp_path),
                          "ENC_HIDDEN_IRREPS": "8x0e + 8x1o + 8x1e", "LATENT_DIM": 16, "CUTOFF": 4.0})
    arrays, cfg, _ = data.load_structures(cfg)
    assert arrays["n_atoms"].tolist() == [len(crystal), 2 * len(crystal)]
    torch.manual_seed(0)
    encoder = EquivGNNEncoder(**training.encoder_hparams(cfg, 10.0, data.is_periodic(arrays))).double().eval()
    structures_ = data.Structures(arrays, cfg.ATOM_TYPES, "cpu")
    z, pos, batch, cell = structures_.gather(torch.arange(2))
    latents = encoder(z, pos.double(), batch, cell.double()).detach()
    torch.testing.assert_close(latents[1], latents[0], rtol=1e-10, atol=1e-10)
    assert latents[0].abs().max() > 1e-3


def test_structures_over_the_size_cap_are_left_out(tmp_path):
    frames = structures("molecules", count=6)
    ase.io.write(tmp_path / "pool.extxyz", frames)
    cap = sorted(len(atoms) for atoms in frames)[3]
    cfg = resolve_config({"DATASET": str(tmp_path / "pool.extxyz"), "TARGET": "gap", "DATA_ROOT": str(tmp_path),
                          "MAX_STRUCTURE_ATOMS": cap})
    arrays, _, dropped = data.load_structures(cfg)
    kept = [i for i, atoms in enumerate(frames) if len(atoms) <= cap]
    assert arrays["index"].tolist() == kept and dropped == len(frames) - len(kept) > 0


def test_an_edited_file_is_parsed_again_and_ase_format_reads_any_name(tmp_path):
    frames = structures("molecules", count=4)
    path = tmp_path / "pool.data"
    ase.io.write(path, frames[:3], format="extxyz")
    cfg = resolve_config({"DATASET": str(path), "TARGET": "gap", "DATA_ROOT": str(tmp_path / "cache"),
                          "ASE_FORMAT": "extxyz"})
    assert len(data.load_dataset(cfg)["n_atoms"]) == 3
    ase.io.write(path, frames, format="extxyz")
    assert len(data.load_dataset(cfg)["n_atoms"]) == 4
    assert len(list((tmp_path / "cache").iterdir())) == 2
    with pytest.raises(structure_file.InputError, match="pool.data: no structures read as .*ASE_FORMAT=FORMAT"):
        data.load_dataset(resolve_config({**vars(cfg), "ASE_FORMAT": None}))


def test_a_file_that_changes_while_parsed_is_an_error(tmp_path, monkeypatch):
    path = tmp_path / "pool.extxyz"
    ase.io.write(path, structures("molecules", count=4))
    reader = structure_file.frames

    def edited_midway(*args):
        for position, atoms in enumerate(reader(*args)):
            if position == 1:
                with open(path, "a") as f:
                    f.write("\n")
            yield atoms
    monkeypatch.setattr(structure_file, "frames", edited_midway)
    cfg = resolve_config({"DATASET": str(path), "TARGET": "gap", "DATA_ROOT": str(tmp_path / "cache")})
    with pytest.raises(structure_file.InputError, match="pool.extxyz: the file changed while it was parsed"):
        data.load_dataset(cfg)
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())


def molecules_with(position, change):
    frames = structures("molecules", count=30)
    change(frames[position])
    return frames


def overlap(atoms):
    atoms.positions[1] = atoms.positions[0] + 0.001


def flat_cell(atoms):
    atoms.set_cell([[5, 0, 0], [0, 5, 0], [0, 0, 0]])
    atoms.pbc = True


def periodic(atoms):
    atoms.set_cell(np.eye(3) * 10)
    atoms.pbc = True


BAD_FILES = {  # name: (file content: frames or raw text, extra flags, expected message)
    "missing": (None, [], "DATASET='{path}': expected one of ['qm9', 'coremof'] or the path of a structure file (no"),
    "empty": ("", [], "{path}: an empty file"),
    "truncated": ("3\nProperties=species:S:1:pos:R:3\nC 0 0 0\n", [], "{path}: not readable as extxyz after 0"),
    "nan label": (molecules_with(4, lambda atoms: atoms.info.update(gap=float("nan"))), [],
                  "{path}: structure_index 4: label gap=nan is not finite"),
    "infinite label": (molecules_with(5, lambda atoms: atoms.info.update(gap=float("inf"))), [],
                       "structure_index 5: label gap=inf is not finite"),
    "mixed": (molecules_with(7, periodic), [], "{path}: structure_index 7 is a crystal and structure_index 0 a molecule"),
    "flat cell": (molecules_with(2, flat_cell), [], "{path}: structure_index 2: cell of volume 0"),
    "overlap": (molecules_with(6, overlap), [],
                "{path}: structure_index 6 (mol6): atoms 0 and 1 (0-based) are 0.0017"),
    "element": (structures("molecules"), ["--set", "ATOM_TYPES=('H', 'C', 'N')"],
                "{path}: structures hold atomic numbers [8] that ATOM_TYPES ('H', 'C', 'N') lacks, the first is "
                "structure_index "),
    "dummy atom": (molecules_with(3, lambda atoms: atoms.numbers.__setitem__(0, 0)), [],
                   "{path}: structure_index 3: atom 0 (0-based) is a dummy atom"),
    "format": (structures("molecules"), ["--set", "ASE_FORMAT=xyzzy"], "ASE_FORMAT='xyzzy': not a format ASE knows"),
}


@pytest.mark.parametrize("case", BAD_FILES)
def test_a_bad_file_stops_with_one_line_and_leaves_nothing(tmp_path, capsys, case):
    content, flags, expected = BAD_FILES[case]
    path = tmp_path / "pool.extxyz"
    if isinstance(content, str):
        path.write_text(content)
    elif content is not None:
        ase.io.write(path, content)
    message = expect_input_error(capsys, run_train, ["--dataset", path, "--target", "gap", "--epochs", 1,
                                                     "--data-root", tmp_path / "data", "--out-dir", tmp_path / "run",
                                                     *flags])
    assert expected.format(path=path) in message
    assert not (tmp_path / "run").exists()
    if case != "element":  # a setting of the run, not of the file: the file's cache serves other ATOM_TYPES
        assert not (tmp_path / "data").exists() or not any((tmp_path / "data").iterdir())


def test_an_unknown_extension_asks_for_ase_format(tmp_path, capsys):
    path = tmp_path / "pool.qqq"
    path.write_bytes(bytes(range(256)))
    message = expect_input_error(capsys, run_train, ["--dataset", path, "--out-dir", tmp_path / "run"])
    assert f"{path}: ASE cannot tell its format (extension 'qqq'); name it with --set ASE_FORMAT=FORMAT" in message


def test_built_in_datasets_refuse_the_file_settings(capsys, tmp_path):
    for setting in ("TARGET_UNIT=eV", "ASE_FORMAT=extxyz"):
        message = expect_input_error(capsys, run_train, ["--set", setting, "--out-dir", tmp_path / "run"])
        assert f"{setting.split('=')[0]}=" in message and "only for a structure file" in message


def test_the_pretrained_export_embeds_crystals_with_their_cells(tmp_path):
    pytest.importorskip("sevenn", reason="optional: pip install -r requirements-pretrained.txt")
    import export_pretrained_latents as export
    import pretrained
    frames = structures("crystals", count=30)
    path = tmp_path / "crystals.extxyz"
    ase.io.write(path, frames)
    export.main(["--data-root", str(tmp_path / "data"), "--batch-size", "5", "--set", f"DATASET={path}",
                 "--set", "TARGET=density", "--set", "PRETRAINED_WORKERS=1", "--out-dir", str(tmp_path / "7net")])
    written = load_latents(tmp_path / "7net" / "latents_crystals.npz")
    np.testing.assert_allclose(written["y_all"], [atoms.info["density"] for atoms in frames])
    embedder = pretrained.load_embedder("sevennet-0", "all", "cpu")
    for position in (0, 7):
        atoms = frames[position].repeat((2, 1, 1))  # a supercell embeds as its cell
        alone, _ = embedder(torch.as_tensor(atoms.numbers), torch.as_tensor(atoms.positions, dtype=torch.float32),
                            torch.zeros(len(atoms), dtype=torch.long), 1,
                            torch.as_tensor(atoms.cell.array, dtype=torch.float32)[None])
        row = int(np.flatnonzero(written["structure_index"] == position)[0])
        np.testing.assert_allclose(written["z_all"][row], alone[0].numpy(), rtol=1e-4, atol=1e-5)
