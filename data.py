"""The structures a run uses: the dataset and property chosen by DATASET and TARGET (qm9.py,
coremof.py, or a structure file of the user's, structure_file.py), a seeded subset, the size cap,
the checks for coincident atoms and elements, and `Structures`, which holds them on the device as
flat tensors and gathers batches by index.

A dataset's structures (load_dataset) have z (A,) uint8 atomic numbers, pos (A, 3) float32 Angstrom,
n_atoms (M,), index (M,) the dataset's own id and y (M,) float64, the TARGET property (NaN where a
file's structure has none); periodic ones also cell (M, 3, 3) float64, one lattice vector a row;
named ones name (M,), their names in the dataset.
"""
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

import coremof
import structure_file
from graphs import (ATOMIC_NUMBER, COINCIDENT_DISTANCE, PERIODIC_TABLE, atomic_numbers, edge_vectors, neighbour_graph,
                    type_index_table)
from qm9 import QM9_TARGETS, load_qm9
from utils import InputError


def check_atom_distances(arrays, source, chunk=8192):
    """No two atoms of one structure (or an atom and a periodic image of another) at (nearly) the
    same position: the edge between them would have no direction, and the encoder's radial basis
    would divide by zero."""
    n_atoms = arrays["n_atoms"]
    first_atom = np.cumsum(n_atoms) - n_atoms
    for start in range(0, len(n_atoms), chunk):
        rows = np.arange(start, min(start + chunk, len(n_atoms)))
        atoms = slice(first_atom[rows[0]], first_atom[rows[-1]] + n_atoms[rows[-1]])
        pos = torch.as_tensor(arrays["pos"][atoms], dtype=torch.float64)
        batch = torch.as_tensor(np.repeat(rows - start, n_atoms[rows]))
        cell = torch.as_tensor(arrays["cell"][rows]) if "cell" in arrays else None
        close, offset = neighbour_graph(pos, batch, COINCIDENT_DISTANCE, cell)
        if close.shape[1]:
            i, j = close[:, 0].tolist()
            structure = start + int(batch[i])
            atom = first_atom[structure] - first_atom[start]
            distance = float(edge_vectors(pos, close[:, :1], None if offset is None else offset[:1]).norm())
            raise InputError(f"{source}: {structure_label(arrays, structure)}: atoms {j - atom} and "
                             f"{i - atom} (0-based) are {distance:.2g} Angstrom apart; expected atoms at least "
                             f"{COINCIDENT_DISTANCE} Angstrom apart")


def structure_label(arrays, row):
    """How error messages name the structure at `row`: by the structure_index column of the outputs
    (a file's: the 0-based position), then its name where it has one."""
    index = f"structure_index {arrays['index'][row]}"
    name = str(arrays["name"][row]) if "name" in arrays else ""
    return f"{index} ({name})" if name else index


PER_ATOM_KEYS = ("z", "pos")  # every other array of a dataset has one entry per structure


def take_structures(arrays, rows):
    """The arrays of the structures at positions `rows`, in that order."""
    counts = arrays["n_atoms"][rows]
    first_atom = (np.cumsum(arrays["n_atoms"]) - arrays["n_atoms"])[rows]
    atom_rows = np.repeat(first_atom - (np.cumsum(counts) - counts), counts) + np.arange(counts.sum())
    return {key: value[atom_rows] if key in PER_ATOM_KEYS else value[rows] for key, value in arrays.items()}


def seeded_subset(arrays, max_structures, seed, pool="the size of the dataset"):
    """A seeded random subset of `max_structures` structures (kept in file order), or all if None;
    `pool` says in errors what `arrays` holds."""
    total = len(arrays["n_atoms"])
    if max_structures is None:
        return arrays
    if not 1 <= max_structures <= total:
        raise InputError(f"max structures {max_structures}: expected 1..{total}, {pool}")
    rows = np.sort(np.random.default_rng(seed).choice(total, max_structures, replace=False))
    return take_structures(arrays, rows)


# --- datasets ----------------------------------------------------------------------

DATASET_TARGETS = {"qm9": QM9_TARGETS, "coremof": coremof.PROPERTY_UNITS}
UNKNOWN_UNIT = "unknown"  # TARGET_UNIT's default: a file does not say what its labels measure


def is_file_dataset(cfg):
    """DATASET names a structure file, not a built-in dataset."""
    return cfg.DATASET not in DATASET_TARGETS


def check_dataset_settings(cfg):
    """DATASET, TARGET, TARGET_UNIT, ASE_FORMAT and HIST_ELEMENTS that can work, before any data is read."""
    if is_file_dataset(cfg):
        path = Path(cfg.DATASET)
        if not path.is_file():
            raise InputError(f"DATASET={cfg.DATASET!r}: expected one of {list(DATASET_TARGETS)} or the path of a "
                             f"structure file ({'a folder' if path.is_dir() else 'no such file'})")
        structure_file.check_readable(path)
    else:
        targets = DATASET_TARGETS[cfg.DATASET]
        if cfg.TARGET not in targets:
            raise InputError(f"TARGET={cfg.TARGET!r}: dataset {cfg.DATASET} has no such property; expected one of "
                             f"{list(targets)}")
        for name, value, default in (("TARGET_UNIT", cfg.TARGET_UNIT, UNKNOWN_UNIT), ("ASE_FORMAT", cfg.ASE_FORMAT,
                                                                                       None)):
            if value != default:
                raise InputError(f"{name}={value!r}: only for a structure file; dataset {cfg.DATASET} sets its own")
    hist_elements = tuple(cfg.HIST_ELEMENTS)
    for symbol in hist_elements:
        if symbol not in ATOMIC_NUMBER:
            hint = f" (did you mean {symbol.capitalize()!r}?)" if symbol.capitalize() in ATOMIC_NUMBER else ""
            raise InputError(f"HIST_ELEMENTS={hist_elements}: {symbol!r} is not an element symbol{hint}; expected "
                             "symbols such as 'C' or 'Zn'")
    twice = sorted({symbol for symbol in hist_elements if hist_elements.count(symbol) > 1})
    if twice:
        raise InputError(f"HIST_ELEMENTS={hist_elements}: lists {twice} more than once; expected distinct elements")


def target_unit(cfg):
    return cfg.TARGET_UNIT if is_file_dataset(cfg) else DATASET_TARGETS[cfg.DATASET][cfg.TARGET]


def load_dataset(cfg):
    """Every structure of cfg.DATASET, read from its cache under DATA_ROOT (built on first use), with
    the TARGET property as y."""
    if is_file_dataset(cfg):
        return structure_file.load_structure_file(cfg.DATA_ROOT, cfg.DATASET, cfg.TARGET, cfg.ASE_FORMAT,
                                                  lambda arrays: check_atom_distances(arrays, cfg.DATASET))
    if cfg.DATASET == "qm9":
        arrays = load_qm9(cfg.DATA_ROOT)
        return {"z": arrays["z"], "pos": arrays["pos"], "n_atoms": arrays["n_atoms"], "index": arrays["index"],
                "y": arrays["homo_ev"]}
    arrays = coremof.load_coremof(cfg.DATA_ROOT)
    missing = ~np.isfinite(arrays[cfg.TARGET])
    if missing.any():
        raise InputError(f"{Path(cfg.DATA_ROOT) / coremof.CACHE_NAME}: TARGET {cfg.TARGET} is NaN for structures "
                         f"{arrays['name'][missing][:5].tolist()} ({missing.sum()} of {len(missing)}); expected a "
                         "value for every structure")
    structures = {key: arrays[key] for key in ("z", "pos", "n_atoms", "index", "cell", "name")}
    return {**structures, "y": arrays[cfg.TARGET]}


def is_periodic(arrays):
    """Crystals (periodic graphs, per-atom descriptors, atom-averaged latents), not molecules."""
    return "cell" in arrays


def dataset_atom_types(atom_types, arrays):
    """ATOM_TYPES, or for None every element in the dataset's structures, in atomic-number order."""
    if atom_types is not None:
        return tuple(atom_types)
    return tuple(PERIODIC_TABLE[number] for number in np.unique(arrays["z"]))


def drop_large_structures(arrays, max_atoms):
    """The structures of at most `max_atoms` atoms (MAX_STRUCTURE_ATOMS), and how many were dropped."""
    small = arrays["n_atoms"] <= max_atoms
    if small.all():
        return arrays, 0
    if not small.any():
        raise InputError(f"MAX_STRUCTURE_ATOMS={max_atoms}: leaves out every structure; the smallest has "
                         f"{arrays['n_atoms'].min()} atoms")
    return take_structures(arrays, np.flatnonzero(small)), int((~small).sum())


def load_structures(cfg):
    """The structures this run uses (those of at most MAX_STRUCTURE_ATOMS atoms, or a seeded subset of
    them), checked for coincident atoms; the config with ATOM_TYPES resolved (None: every element of
    the dataset); and how many structures the size cap left out."""
    arrays = load_dataset(cfg)
    cfg = SimpleNamespace(**{**vars(cfg), "ATOM_TYPES": dataset_atom_types(cfg.ATOM_TYPES, arrays)})
    arrays, dropped = drop_large_structures(arrays, cfg.MAX_STRUCTURE_ATOMS)
    pool = (f"the structures of at most MAX_STRUCTURE_ATOMS={cfg.MAX_STRUCTURE_ATOMS} atoms" if dropped
            else "the size of the dataset")
    arrays = seeded_subset(arrays, cfg.MAX_STRUCTURES, cfg.SEED, pool)
    source = dataset_source(cfg)
    check_atom_distances(arrays, source)
    check_elements(arrays, atomic_numbers(cfg.ATOM_TYPES), source, f"ATOM_TYPES {tuple(cfg.ATOM_TYPES)}")
    return arrays, cfg, dropped


def dataset_source(cfg):
    """How error messages name the dataset: a structure file by its path, a built-in one by its cache."""
    return cfg.DATASET if is_file_dataset(cfg) else f"{cfg.DATASET} cache in {cfg.DATA_ROOT}"


def check_elements(arrays, numbers, source, known_by):
    """Every atom's atomic number is one of `numbers`, the elements that `known_by` (ATOM_TYPES, a
    pretrained model) names; the error names the first structure with another."""
    known = np.isin(arrays["z"], numbers)
    if not known.all():
        extra = sorted({int(z) for z in arrays["z"][~known]})
        row = int(np.searchsorted(np.cumsum(arrays["n_atoms"]), np.argmin(known), side="right"))
        raise InputError(f"{source}: structures hold atomic numbers {extra} that {known_by} lacks, the first is "
                         f"{structure_label(arrays, row)}")


# --- device-resident batches -------------------------------------------------------

class Structures:
    """Structures as flat tensors on one device; a batch is an index gather, no Python objects."""

    def __init__(self, arrays, atom_types, device):
        known = np.isin(arrays["z"], atomic_numbers(atom_types))
        if not known.all():
            extra = sorted({int(z) for z in arrays["z"][~known]})
            raise InputError(f"structures contain atomic numbers {extra} that ATOM_TYPES {tuple(atom_types)} lacks")
        self.num_molecules = len(arrays["n_atoms"])
        self.z = torch.as_tensor(arrays["z"].astype(np.int64), device=device)
        self.types = type_index_table(atom_types).to(device)[self.z]  # row of ATOM_TYPES per atom
        self.pos = torch.as_tensor(arrays["pos"], device=device)
        self.cell = torch.as_tensor(arrays["cell"], dtype=self.pos.dtype, device=device) if "cell" in arrays else None
        self.n_atoms = torch.as_tensor(arrays["n_atoms"], device=device)
        self.first_atom = self.n_atoms.cumsum(0) - self.n_atoms
        self.n_atoms_host = arrays["n_atoms"]  # for batching without a device round trip
        self.atom_targets = None  # per-atom training targets (A, width), when a run sets them (training.prepare_data)
        self.teacher_targets = None  # a frozen teacher's per-atom features (A, width), likewise

    def atoms_of(self, rows):
        """Atom rows of structures `rows` (B,) and the batch position of each: (atoms (A,), batch (A,))."""
        counts = self.n_atoms[rows]
        batch = torch.repeat_interleave(torch.arange(len(rows), device=counts.device), counts)
        offset_in_batch = counts.cumsum(0) - counts
        atoms = self.first_atom[rows][batch] + torch.arange(len(batch), device=counts.device) - offset_in_batch[batch]
        return atoms, batch

    def cells_of(self, rows):
        """The cells (B, 3, 3) of structures `rows`, or None for molecules."""
        return None if self.cell is None else self.cell[rows]

    def gather(self, rows):
        """Structures `rows` (B,) as encoder input (z (A,), pos (A, 3), batch (A,), cell (B, 3, 3) or None)."""
        atoms, batch = self.atoms_of(rows)
        return self.z[atoms], self.pos[atoms], batch, self.cells_of(rows)

    def batches(self, rows, batch_size, max_atoms):
        """Consecutive chunks of a 1-D tensor of structure rows: at most `batch_size` structures and
        `max_atoms` atoms each, so large periodic cells do not fill memory; a structure larger than
        `max_atoms` is a batch of its own."""
        sizes = self.n_atoms_host[rows.cpu().numpy()]
        chunks, first, atoms = [], 0, 0
        for position, size in enumerate(sizes.tolist()):
            if position - first == batch_size or (atoms + size > max_atoms and position > first):
                chunks.append(position - first)
                first, atoms = position, 0
            atoms += size
        return torch.split(rows, chunks + [len(sizes) - first]) if len(sizes) else ()
