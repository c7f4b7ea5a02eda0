"""Per-atom targets of a distilled student: a frozen pretrained potential's (TEACHER's) invariant
node features, the PRETRAINED_READOUT readout of pretrained.py before it averages over atoms. They are
computed once for every structure (train, val and test: the student's latents are used everywhere),
with a progress bar, cached under DATA_ROOT as float16, and standardized per column with the
training atoms' statistics.

float16 on disk: the features of SevenNet-0 on QM9 stay below 17 in magnitude, and rounding them
costs 3e-4 of a column's std on average (6e-3 at most), far below what a student fits, at half the
size of float32 (full QM9: 2.36 M atoms x 640 columns, 3.0 GB against 6.0 GB).

Shapes: A atoms in all; the targets are (A, the teacher's dim), in the atoms' order.
"""
import importlib.metadata

import numpy as np
import torch
from tqdm import tqdm

import data
import pretrained
from atom_targets import cached_atom_values, standardized_atom_values, structures_cache_name

CACHE_DTYPE = np.float16


def check_teacher(cfg):
    """TEACHER a known model, PRETRAINED_READOUT a known readout and, when the teacher's loss is on,
    its package installed."""
    pretrained.check_model_settings(cfg.TEACHER, cfg.PRETRAINED_READOUT, setting="TEACHER")
    if cfg.TEACHER_WEIGHT > 0:
        pretrained.require(pretrained.MODELS[cfg.TEACHER][0].package)


def load_teacher(cfg, device):
    return pretrained.load_embedder(cfg.TEACHER, cfg.PRETRAINED_READOUT, device, cfg.PRETRAINED_MIRROR_AVERAGE)


def mirror_averaged(cfg):
    """Whether the teacher averages each structure with its mirror image: PRETRAINED_MIRROR_AVERAGE, for a
    model not invariant under reflections (pretrained.load_embedder)."""
    return cfg.PRETRAINED_MIRROR_AVERAGE and not pretrained.MODELS[cfg.TEACHER][0].reflection_invariant


def describe_teacher(cfg):
    """The teacher as a student's latent_source names it."""
    mirror = ", mirror-averaged" if mirror_averaged(cfg) else ""
    return f"{cfg.TEACHER} ({cfg.PRETRAINED_READOUT} readout{mirror})"


def build_teacher_features(arrays, cfg, teacher, device):
    """The teacher's features of every atom of `arrays` (A, teacher.dim) as CACHE_DTYPE, computed
    PRETRAINED_BATCH_SIZE structures per pass on `device`; crystals with their cells."""
    structures = data.Structures(arrays, cfg.ATOM_TYPES, device)
    values = np.empty((len(arrays["z"]), teacher.dim), dtype=CACHE_DTYPE)
    rows = torch.arange(structures.num_molecules, device=device)
    done = 0
    with tqdm(total=structures.num_molecules, unit="structure", desc=f"{cfg.TEACHER} per atom", mininterval=1.0) as bar:
        for chunk in structures.batches(rows, cfg.PRETRAINED_BATCH_SIZE, cfg.BATCH_MAX_ATOMS):
            z, pos, batch, cell = structures.gather(chunk)
            features = teacher.atom_features(z, pos, batch, len(chunk), cell)[0]
            values[done:done + len(z)] = features.cpu().numpy()
            done += len(z)
            bar.update(len(chunk))
    return values


def cache_name(arrays, cfg, teacher):
    """File name of the teacher's features of these structures: a hash of the model, its package
    version, the readout and the structures."""
    settings = {"teacher": cfg.TEACHER, "checkpoint": str(teacher.checkpoint), "readout": cfg.PRETRAINED_READOUT,
                "mirror_average": mirror_averaged(cfg), "package_version": importlib.metadata.version(teacher.package)}
    return structures_cache_name(f"teacher_targets_{cfg.TEACHER}", settings, arrays)


def load_teacher_features(arrays, cfg, device):
    """The teacher's per-atom features of `arrays` (A, dim) CACHE_DTYPE, from the cache under DATA_ROOT or
    computed and cached there. Every element must be one the teacher knows."""
    teacher = load_teacher(cfg, device)
    data.check_elements(arrays, teacher.elements, data.dataset_source(cfg),
                        pretrained.trained_elements(cfg.TEACHER, teacher.elements))
    return cached_atom_values(arrays, cfg, cache_name(arrays, cfg, teacher), "teacher target cache", teacher.dim,
                              CACHE_DTYPE, lambda: build_teacher_features(arrays, cfg, teacher, device))


def teacher_targets(arrays, train_atoms, cfg, device):
    """Standardized teacher targets (A, dim) float32 on `device`, statistics from the atoms `train_atoms`."""
    return standardized_atom_values(load_teacher_features(arrays, cfg, device), train_atoms, device)
