"""Pretrained-potential latents: the embedding really comes from the named checkpoint (its energy
equals the library's own calculator), it is invariant where the model is, batching changes
nothing, and the export writes the latents_qm9.npz format, resumably and never half-written."""
import importlib.util
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from e3nn import o3

import data
import export_pretrained_latents as export
import latents
import pretrained
from conftest import expect_input_error
from utils import InputError, quiet_logger, train_val_test_split_indices

pytest.importorskip("sevenn", reason="optional: pip install -r requirements-pretrained.txt")
pytest.importorskip("chgnet", reason="optional: pip install -r requirements-pretrained.txt")
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning")

QM9_ROWS = [3, 500, 20_000, 77_000, 130_000]  # 3 to 27 atoms, every element of QM9


@pytest.fixture(scope="module")
def embedders():
    return {name: pretrained.load_embedder(name, "all", "cpu") for name in ("sevennet-0", "chgnet")}


@pytest.fixture(scope="module")
def molecules(qm9_arrays):
    """A few QM9 molecules as (z, pos, batch, count)."""
    structures = data.Structures(qm9_arrays, ("H", "C", "N", "O", "F"), "cpu")
    z, pos, batch, _ = structures.gather(torch.tensor(QM9_ROWS))
    return z, pos, batch, len(QM9_ROWS)


def each_molecule(molecules):
    z, pos, batch, count = molecules
    return [(z[batch == k], pos[batch == k]) for k in range(count)]


@pytest.fixture(scope="module")
def calculators():
    """The libraries' own ASE calculators, each loading its default checkpoint by itself."""
    from chgnet.model.dynamics import CHGNetCalculator
    from sevenn.calculator import SevenNetCalculator
    return {"sevennet-0": SevenNetCalculator("7net-0", device="cpu"), "chgnet": CHGNetCalculator(use_device="cpu")}


def ase_energy(calculator, atoms):
    atoms.calc = calculator
    return atoms.get_potential_energy()


def as_atoms(name, embedder, z, pos):
    """A molecule as the library's calculator takes it: CHGNet's in its box, SevenNet's without a cell."""
    from ase import Atoms
    if name == "chgnet":
        return embedder.boxed(z, pos.double()).to_ase_atoms()
    return Atoms(numbers=z.numpy(), positions=pos.numpy())


@pytest.mark.parametrize("name", ["sevennet-0", "chgnet"])
def test_energy_of_the_same_pass_equals_the_calculator(embedders, calculators, molecules, name):
    embedding, energy = embedders[name](*molecules)
    expected = [ase_energy(calculators[name], as_atoms(name, embedders[name], z, pos))
                for z, pos in each_molecule(molecules)]
    assert embedding.shape == (len(QM9_ROWS), embedders[name].dim)
    np.testing.assert_allclose(energy.numpy(), expected, rtol=1e-6, atol=1e-4)


@pytest.mark.parametrize("name", ["sevennet-0", "chgnet"])
def test_batched_equals_one_molecule_at_a_time(embedders, molecules, name):
    batched, _ = embedders[name](*molecules)
    for k, (z, pos) in enumerate(each_molecule(molecules)):
        alone, _ = embedders[name](z, pos, torch.zeros(len(z), dtype=torch.long), 1)
        torch.testing.assert_close(alone[0], batched[k], rtol=1e-5, atol=1e-5)


def transformed(molecules, rotation, shift, generator):
    """Every molecule rotated by `rotation` (float64), shifted, and its atoms shuffled."""
    z, pos, batch, count = molecules
    moved = (pos.double() @ rotation.T + shift).float()
    order = torch.cat([torch.nonzero(batch == k).flatten()[torch.randperm(int((batch == k).sum()),
                                                                           generator=generator)]
                       for k in range(count)])
    return z[order], moved[order], batch[order], count


def largest_change(embedder, molecules, rotation, seed):
    generator = torch.Generator().manual_seed(seed)
    shift = torch.randn(3, generator=generator, dtype=torch.float64) * 10
    before, _ = embedder(*molecules)
    after, _ = embedder(*transformed(molecules, rotation, shift, generator))
    return float((after - before).abs().max() / before.abs().max())


@pytest.mark.parametrize("name", ["sevennet-0", "chgnet"])
@pytest.mark.parametrize("seed", [0, 1])
def test_invariant_under_rotation_translation_and_permutation(embedders, molecules, name, seed):
    torch.manual_seed(seed)
    assert largest_change(embedders[name], molecules, o3.rand_matrix(dtype=torch.float64), seed) < 1e-5


@pytest.mark.parametrize("seed", [0, 1])
def test_reflections_chgnet_invariant_sevennet_nearly(embedders, molecules, seed):
    """CHGNet reads distances and angles only. SevenNet-0's irreps carry no parity, so a mirror
    image moves its embedding: by about 0.1-0.5% of the embedding's scale, far above float32 noise."""
    torch.manual_seed(seed)
    mirror = -o3.rand_matrix(dtype=torch.float64)
    assert largest_change(embedders["chgnet"], molecules, mirror, seed) < 1e-5
    assert 1e-4 < largest_change(embedders["sevennet-0"], molecules, mirror, seed) < 1e-2


def test_mirror_averaging_makes_sevennet_reflection_invariant(molecules):
    averaged = pretrained.load_embedder("sevennet-0", "all", "cpu", mirror_average=True)
    torch.manual_seed(0)
    assert largest_change(averaged, molecules, -o3.rand_matrix(dtype=torch.float64), 0) < 1e-5
    assert "mirror image" in pretrained.describe(averaged, "sevennet-0", "all")["embedding"]
    assert not isinstance(pretrained.load_embedder("chgnet", "all", "cpu", mirror_average=True),
                          pretrained.MirrorAveraged)  # already invariant: nothing to average


def test_a_larger_box_changes_nothing_for_chgnet(embedders, molecules):
    before, energy_before = embedders["chgnet"](*molecules)
    wide = pretrained.load_embedder("chgnet", "all", "cpu")
    wide.box_margin = 20.0
    after, energy_after = wide(*molecules)
    torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(energy_after, energy_before)


@pytest.mark.parametrize("name, blocks", [("sevennet-0", 5), ("chgnet", 4)])
def test_readout_last_is_the_tail_of_all(embedders, molecules, name, blocks):
    every_layer, _ = embedders[name](*molecules)
    last = pretrained.load_embedder(name, "last", "cpu")
    last_layer, _ = last(*molecules)
    assert every_layer.shape[1] == blocks * last.dim
    torch.testing.assert_close(last_layer, every_layer[:, -last.dim:])
    assert not torch.allclose(every_layer[:, :last.dim], last_layer, atol=1e-2)


def test_a_models_elements_are_named_as_runs(embedders):
    assert pretrained.trained_elements("sevennet-0", embedders["sevennet-0"].elements) == \
        "sevennet-0 (trained on 89 elements, atomic numbers 1..83, 89..94)"  # no Po, At, Rn, Fr, Ra
    assert pretrained.trained_elements("chgnet", embedders["chgnet"].elements) == \
        "chgnet (trained on 94 elements, atomic numbers 1..94)"
    assert pretrained.trained_elements("toy", [8, 1, 3, 2, 6]) == "toy (trained on 5 elements, atomic numbers 1..3, 6, 8)"


def test_a_file_with_an_element_the_model_lacks_names_its_first_structure(capsys, tmp_path):
    """Radon (86), a noble gas SevenNet-0 was not trained on, in structures 3 and 5 of a structure file."""
    from ase import Atoms
    from ase.io import write
    frames = [Atoms(numbers=[6, 86 if position in (3, 5) else 8, 1], positions=[[0, 0, 0], [1.5, 0, 0], [0, 1.1, 0]],
                    info={"gap": 0.1 * position, "name": f"mol{position}"}) for position in range(6)]
    path = tmp_path / "pool.extxyz"
    write(path, frames)
    message = expect_input_error(capsys, export.main, [
        "--data-root", str(tmp_path / "data"), "--set", f"DATASET={path}", "--set", "TARGET=gap", "--set",
        "PRETRAINED_WORKERS=1", "--out-dir", str(tmp_path / "out")])
    assert message == (f"error: {path}: structures hold atomic numbers [86] that sevennet-0 (trained on 89 elements, "
                       "atomic numbers 1..83, 89..94) lacks, the first is structure_index 3 (mol3)")
    assert not (tmp_path / "out").exists()


def test_a_missing_package_names_what_to_install(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "sevenn" else real(name, *a))
    with pytest.raises(InputError, match="package sevenn is not installed.*requirements-pretrained.txt"):
        pretrained.load_embedder("sevennet-0", "all", "cpu")


@pytest.mark.parametrize("flags, expected", [
    (["--model", "mace-off"], "PRETRAINED_MODEL='mace-off': unknown model; expected one of"),
    (["--set", "PRETRAINED_READOUT=first"], "PRETRAINED_READOUT='first': expected one of"),
    (["--set", "PRETRAINED_WORKERS=99"], "PRETRAINED_WORKERS=99: expected 1.."),
    (["--set", "PRETRAINED_WORKERS=0"], "PRETRAINED_WORKERS=0: expected a positive number"),
])
def test_bad_settings_are_one_line_errors(capsys, tmp_path, flags, expected):
    message = expect_input_error(capsys, export.main, [*flags, "--out-dir", str(tmp_path / "out")])
    assert expected in message
    assert not (tmp_path / "out").exists()


def run_export(qm9_root, out_dir, *extra):
    export.main(["--data-root", str(qm9_root), "--max-molecules", "40", "--batch-size", "3",
                 "--set", "PRETRAINED_CHUNK_SIZE=16", "--set", "PRETRAINED_WORKERS=1", "--out-dir", str(out_dir),
                 *extra])


@pytest.fixture(scope="module")
def exported(qm9_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "run"
    run_export(qm9_root, out)
    return out


def test_export_writes_the_latents_format_on_the_encoders_split(exported, qm9_arrays):
    arrays = latents.load_latents(exported / "latents_qm9.npz")
    subset = data.seeded_subset(qm9_arrays, 40, 0)
    assert arrays["z_all"].shape == (40, 640) and arrays["z_all"].dtype == np.float32
    np.testing.assert_array_equal(arrays["y_all"], subset["homo_ev"])
    np.testing.assert_array_equal(arrays["structure_index"], subset["index"])
    for key, rows in zip(latents.INDEX_KEYS, train_val_test_split_indices(40, (0.8, 0.1, 0.1), 0)):
        np.testing.assert_array_equal(arrays[key], rows)
    assert "sevennet-0" in str(arrays["latent_source"]) and '"dim": 640' in str(arrays["config"])
    assert not (exported / export.CHUNK_DIR).exists()


def test_a_killed_export_leaves_no_latents_and_resumes_bit_for_bit(exported, qm9_root, tmp_path, monkeypatch):
    real_write = export.write_chunk
    written = []

    def killed_after_the_first_chunk(path, *arrays):
        if written:
            raise KeyboardInterrupt
        written.append(path)
        real_write(path, *arrays)

    monkeypatch.setattr(export, "write_chunk", killed_after_the_first_chunk)
    with pytest.raises(KeyboardInterrupt):
        run_export(qm9_root, tmp_path / "run")
    assert not (tmp_path / "run" / "latents_qm9.npz").exists()
    assert sorted(p.name for p in (tmp_path / "run" / export.CHUNK_DIR).iterdir()) == ["chunk_00000.npz"]

    embedded = []
    monkeypatch.setattr(export, "write_chunk", lambda path, *arrays: (embedded.append(path.name),
                                                                     real_write(path, *arrays)))
    export.main(["--out-dir", str(tmp_path / "run"), "--resume"])
    assert embedded == ["chunk_00001.npz", "chunk_00002.npz"]
    resumed, whole = (np.load(folder / "latents_qm9.npz") for folder in (tmp_path / "run", exported))
    for key in ("z_all", "model_energy_ev", "y_all", "idx_test"):
        np.testing.assert_array_equal(resumed[key], whole[key])


def test_batch_and_chunk_sizes_set_the_passes_and_the_files(qm9_arrays, tmp_path):
    structures = data.Structures(data.seeded_subset(qm9_arrays, 40, 0), ("H", "C", "N", "O", "F"), "cpu")
    passes = []

    def fake_embedder(z, pos, batch, count, cell):
        assert cell is None  # molecules
        passes.append(count)
        return torch.zeros(count, 2), torch.zeros(count, dtype=torch.float64)
    fake_embedder.dim = 2

    cfg = SimpleNamespace(PRETRAINED_BATCH_SIZE=3, PRETRAINED_CHUNK_SIZE=16, BATCH_MAX_ATOMS=8192)
    export.embed_chunks(fake_embedder, structures, cfg, tmp_path, quiet_logger("test"))
    assert passes == [3, 3, 3, 3, 3, 1] * 2 + [3, 3, 2]
    assert sorted(p.name for p in (tmp_path / export.CHUNK_DIR).iterdir()) == [f"chunk_0000{k}.npz" for k in range(3)]


def test_resume_takes_no_new_settings_and_no_finished_export(capsys, exported):
    message = expect_input_error(capsys, export.main, ["--out-dir", str(exported), "--resume", "--batch-size", "8"])
    assert "takes no settings" in message
    message = expect_input_error(capsys, export.main, ["--out-dir", str(exported), "--resume"])
    assert "this export has finished (latents_qm9.npz is written); nothing to resume" in message


def test_a_damaged_chunk_is_named(tmp_path):
    export.write_chunk(tmp_path / "chunk_00000.npz", np.zeros((3, 4), np.float32), np.zeros(3))
    with pytest.raises(InputError, match="chunk_00000.npz: expected embedding \\(5, 4\\)"):
        export.read_chunk(tmp_path / "chunk_00000.npz", 5, 4)


# --- crystals ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def crystals():
    """Two small rattled crystals whose cells are thinner than the cutoff (atoms meet images of
    themselves two or more cells away), as ASE Atoms."""
    from ase.build import bulk
    rocksalt, silicon = bulk("NaCl", "rocksalt", a=5.64), bulk("Si", "diamond", a=5.43)
    for seed, atoms in enumerate((rocksalt, silicon)):
        atoms.rattle(0.05, seed=seed)
    return [rocksalt, silicon]


def as_batch(crystals):
    """(z, pos, batch, count, cell) of ASE crystals, in float32 like the package's structures."""
    z = torch.cat([torch.as_tensor(atoms.numbers) for atoms in crystals])
    pos = torch.cat([torch.as_tensor(atoms.positions, dtype=torch.float32) for atoms in crystals])
    batch = torch.cat([torch.full((len(atoms),), k) for k, atoms in enumerate(crystals)])
    cell = torch.stack([torch.as_tensor(atoms.cell.array, dtype=torch.float32) for atoms in crystals])
    return z, pos, batch, len(crystals), cell


@pytest.mark.parametrize("name", ["sevennet-0", "chgnet"])
def test_a_crystals_energy_equals_the_calculator(embedders, calculators, crystals, name):
    _, energy = embedders[name](*as_batch(crystals))
    expected = [ase_energy(calculators[name], atoms.copy()) for atoms in crystals]
    np.testing.assert_allclose(energy.numpy(), expected, rtol=1e-5, atol=1e-3)


@pytest.mark.parametrize("name", ["sevennet-0", "chgnet"])
def test_a_crystal_and_its_supercell_share_the_embedding(embedders, crystals, name):
    embedding, energy = embedders[name](*as_batch(crystals))
    doubled, doubled_energy = embedders[name](*as_batch([atoms.repeat((2, 1, 1)) for atoms in crystals]))
    torch.testing.assert_close(doubled, embedding, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(doubled_energy, 2 * energy, rtol=1e-5, atol=1e-3)


@pytest.mark.parametrize("name", ["sevennet-0", "chgnet"])
def test_rotating_cell_and_positions_together_changes_nothing(embedders, crystals, name):
    torch.manual_seed(3)
    rotation = o3.rand_matrix(dtype=torch.float64)
    shift = torch.tensor([0.3, -1.2, 2.5], dtype=torch.float64)
    z, pos, batch, count, cell = as_batch(crystals)
    before, _ = embedders[name](z, pos, batch, count, cell)
    after, _ = embedders[name](z, (pos.double() @ rotation.T + shift).float(), batch, count,
                               (cell.double() @ rotation.T).float())
    torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-5)


def test_mirror_averaging_covers_crystals(crystals):
    averaged = pretrained.load_embedder("sevennet-0", "all", "cpu", mirror_average=True)
    torch.manual_seed(4)
    mirror = -o3.rand_matrix(dtype=torch.float64)
    z, pos, batch, count, cell = as_batch(crystals)
    before, _ = averaged(z, pos, batch, count, cell)
    after, _ = averaged(z, (pos.double() @ mirror.T).float(), batch, count, (cell.double() @ mirror.T).float())
    torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-5)


def killed_after_the_first_chunk(qm9_root, out_dir, monkeypatch):
    """An export of three chunks killed after writing the first."""
    real_write = export.write_chunk

    def write_then_die(path, *arrays):
        if path.name != "chunk_00000.npz":
            raise KeyboardInterrupt
        real_write(path, *arrays)

    with monkeypatch.context() as patch:
        patch.setattr(export, "write_chunk", write_then_die)
        with pytest.raises(KeyboardInterrupt):
            run_export(qm9_root, out_dir)


def assert_same_latents(folder, exported):
    resumed, whole = (np.load(path / "latents_qm9.npz") for path in (folder, exported))
    for key in ("z_all", "model_energy_ev", "y_all", "idx_test"):
        np.testing.assert_array_equal(resumed[key], whole[key])


def test_two_workers_write_the_same_bits_as_one(exported, qm9_root, tmp_path):
    run_export(qm9_root, tmp_path / "run", "--set", "PRETRAINED_WORKERS=2")
    assert_same_latents(tmp_path / "run", exported)
    assert "2 processes of one thread" in (tmp_path / "run" / "export.log").read_text()


def test_a_resume_in_two_workers_redoes_only_the_missing_chunks(exported, qm9_root, tmp_path, monkeypatch):
    killed_after_the_first_chunk(qm9_root, tmp_path / "run", monkeypatch)
    saved = tmp_path / "run" / "config.json"
    saved.write_text(saved.read_text().replace('"PRETRAINED_WORKERS": 1', '"PRETRAINED_WORKERS": 2'))
    export.main(["--out-dir", str(tmp_path / "run"), "--resume"])
    log = (tmp_path / "run" / "export.log").read_text()
    assert [log.count(f"chunk {k} of 3 written") for k in (1, 2, 3)] == [1, 1, 1]
    assert "2 processes of one thread" in log
    assert_same_latents(tmp_path / "run", exported)


def test_a_write_killed_midway_leaves_a_temporary_that_resume_removes(exported, qm9_root, tmp_path, monkeypatch):
    killed_after_the_first_chunk(qm9_root, tmp_path / "run", monkeypatch)
    (tmp_path / "run" / export.CHUNK_DIR / ".chunk_00001.npz.4242.tmp").write_bytes(b"half a chunk")
    export.main(["--out-dir", str(tmp_path / "run"), "--resume"])
    assert not (tmp_path / "run" / export.CHUNK_DIR).exists()
    assert_same_latents(tmp_path / "run", exported)


def test_a_truncated_chunk_stops_the_resume_before_any_embedding(capsys, qm9_root, tmp_path, monkeypatch):
    killed_after_the_first_chunk(qm9_root, tmp_path / "run", monkeypatch)
    chunk = tmp_path / "run" / export.CHUNK_DIR / "chunk_00000.npz"
    chunk.write_bytes(chunk.read_bytes()[:1000])
    embedded = []
    monkeypatch.setattr(export, "write_chunk", lambda path, *arrays: embedded.append(path))
    message = expect_input_error(capsys, export.main, ["--out-dir", str(tmp_path / "run"), "--resume"])
    assert "chunk_00000.npz" in message and embedded == []
