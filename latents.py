"""The latents file, latents_<dataset>.npz: what train_encoder_qm9.py and export_pretrained_latents.py
write and sampling_mlp_experiment.py reads. Every key, with its shape (M structures, D latent
dimensions):

- z_all (M, D) float32: the latent of every structure.
- y_all (M,) float64: the labelled property, named by target_name and measured in target_unit; NaN
  for the structures of a structure file that have no label.
- labelled (M,) bool, for a structure file only: which structures have a label (none: an unlabelled
  pool, which --select can use but the experiment cannot).
- idx_train, idx_val, idx_test: int64 row indices, disjoint, covering 0..M-1 (the seeded split).
- structure_index (M,) int64: the dataset's own id of each structure (QM9 `Index`, CoRE MOF CSV row,
  the 0-based position in a structure file).
- structure_name (M,) str: for datasets whose structures have names (CoRE MOF CIF names, a file's
  atoms.info["name"], "" where a structure has none).
- dataset, target_name, target_unit: 0-d str.
- latent_source: 0-d str, what z_all is (the encoder of an epoch, the descriptor targets, a
  pretrained model).
- config: 0-d str, the JSON of the settings that wrote the file, with git_commit and git_dirty of the
  writing tree (a pretrained export adds latent_model; files from before lack git_commit and git_dirty).

Files from before the npz named its property and dataset hold QM9 HOMO energies in eV and call
structure_index qm9_index; the reader takes them as such.
"""
from pathlib import Path

import numpy as np

import data
from cli import config_json, run_metadata
from utils import InputError, atomic_path, load_npz


def latents_name(dataset):
    """The latents file of a dataset: latents_qm9.npz, latents_coremof.npz; of a file pool.extxyz,
    latents_pool.npz."""
    return f"latents_{Path(dataset).stem}.npz"


def write_latents(path, latents, arrays, split, cfg, source, model=None, **extra):
    """latents_<DATASET>.npz: z_all (M, D) float32; y_all (M,) float64, the TARGET property, named by
    target_name and target_unit; the split; structure_index, the dataset's id of each structure
    (QM9 Index, CoRE MOF CSV row, position in a file), and for a named dataset structure_name; for a
    structure file labelled, which structures have a label (y NaN where not); dataset; config; and
    latent_source, what z_all is (the encoder of an epoch, the descriptor targets, a pretrained
    model). The config also records git_commit and git_dirty of the tree that wrote the file. `model`
    describes a pretrained source in the config; `extra` arrays are stored as given."""
    idx_train, idx_val, idx_test = split
    writer = {key: value for key, value in run_metadata().items() if key in ("git_commit", "git_dirty")}
    config = config_json(cfg, **writer) if model is None else config_json(cfg, latent_model=model, **writer)
    optional = {"structure_name": arrays["name"]} if "name" in arrays else {}
    if data.is_file_dataset(cfg):
        optional["labelled"] = np.isfinite(arrays["y"])
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, z_all=latents.astype(np.float32), y_all=arrays["y"].astype(np.float64), idx_train=idx_train,
                 idx_val=idx_val, idx_test=idx_test, structure_index=arrays["index"].astype(np.int64), **optional,
                 dataset=np.array(cfg.DATASET), target_name=np.array(cfg.TARGET),
                 target_unit=np.array(data.target_unit(cfg)), config=np.array(config),
                 latent_source=np.array(source), **extra)

INDEX_KEYS = ("idx_train", "idx_val", "idx_test")

REQUIRED_KEYS = ("z_all", "y_all", *INDEX_KEYS)

LEGACY_QM9 = {"dataset": "qm9", "target_name": "homo", "target_unit": "eV"}  # files from before the npz named them


def load_latents(path):
    """The arrays of a latents file, checked: keys, shapes, dtypes, finite values (NaN labels only
    where a structure file's `labelled` is False), disjoint in-range splits. Files from before the
    npz named its property and dataset hold QM9 HOMO energies in eV and call structure_index
    qm9_index; they are read as such."""
    arrays = load_npz(path, "latents file")
    if "qm9_index" in arrays:
        arrays = {**LEGACY_QM9, "structure_index": arrays.pop("qm9_index"), **arrays}
    for key, legacy in LEGACY_QM9.items():
        arrays[key] = str(arrays.get(key, legacy))
    missing = [key for key in REQUIRED_KEYS if key not in arrays]
    if missing:
        raise InputError(f"{path}: missing keys {missing}; expected {list(REQUIRED_KEYS)}")
    z, y = arrays["z_all"], arrays["y_all"]
    if z.ndim != 2 or y.shape != (len(z),) or not np.issubdtype(z.dtype, np.floating) \
            or not np.issubdtype(y.dtype, np.floating):
        raise InputError(f"{path}: expected float z_all (M, D) and y_all (M,), got {z.dtype} {z.shape} "
                         f"and {y.dtype} {y.shape}")
    if z.shape[0] == 0:
        raise InputError(f"{path}: z_all has no rows; expected one latent per structure")
    if z.shape[1] == 0:
        raise InputError(f"{path}: z_all has no columns; expected latents of one or more dimensions")
    labelled = check_labelled(path, arrays)
    for key, values in (("z_all", z), ("y_all", y[labelled])):  # y_all: NaN marks an unlabelled structure
        bad = int((~np.isfinite(values)).sum())
        if bad:
            raise InputError(f"{path}: {key} has {bad} NaN or infinite values")
    largest, limit = float(np.abs(z).max()), max_latent_magnitude(z.shape[1])
    if largest > limit:
        raise InputError(f"{path}: z_all reaches {largest:.3g}; expected values below {limit:.3g} in magnitude, so "
                         "that squared distances between latents stay finite in float32")
    seen = np.zeros(len(z), dtype=bool)
    for key in INDEX_KEYS:
        index = arrays[key]
        if index.ndim != 1 or not np.issubdtype(index.dtype, np.integer) or len(index) == 0:
            raise InputError(f"{path}: {key} must be a non-empty 1-D integer array, got {index.dtype} {index.shape}")
        if index.min() < 0 or index.max() >= len(z):
            raise InputError(f"{path}: {key} has indices outside 0..{len(z) - 1}")
        if seen[index].any() or len(np.unique(index)) != len(index):
            raise InputError(f"{path}: {key} repeats indices or overlaps another split")
        seen[index] = True
        arrays[key] = index.astype(np.int64)  # any integer type on disk; torch indexes with int64
    if not labelled.all():  # a pool to --select from; the experiment refuses it
        return arrays
    test_labels = y[arrays["idx_test"]]
    if len(test_labels) < 2 or test_labels.min() == test_labels.max():
        raise InputError(f"{path}: idx_test holds {len(test_labels)} molecules with {len(np.unique(test_labels))} "
                         "distinct labels; R2 needs at least 2 test molecules with different labels")
    return arrays


def check_labelled(path, arrays):
    """Which rows have a label (M,) bool: all, or those of the `labelled` key (a structure file's
    latents), whose other rows must hold NaN in y_all."""
    if "labelled" not in arrays:
        return np.ones(len(arrays["y_all"]), dtype=bool)
    labelled = arrays["labelled"]
    if labelled.dtype != bool or labelled.shape != arrays["y_all"].shape:
        raise InputError(f"{path}: labelled is {labelled.dtype} {labelled.shape}; expected bool "
                         f"{arrays['y_all'].shape}, one entry a structure")
    if not np.isnan(arrays["y_all"][~labelled]).all():
        raise InputError(f"{path}: y_all holds values where labelled is False; expected NaN there")
    return labelled


def max_latent_magnitude(dim):
    """The largest |z| whose squared distances, up to dim * (2 |z|)^2, fit in float32."""
    return float(np.sqrt(np.finfo(np.float32).max / (4 * dim)))
