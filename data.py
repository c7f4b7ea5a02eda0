"""The structures of a dataset (QM9 molecules, CoRE MOF crystals): parsed once into a cache, held on
the device as flat tensors, gathered into batches by index, and described by label-free structure
descriptors.

QM9 cache arrays (M molecules, A atoms): z (A,) uint8 atomic numbers, pos (A, 3) float32 Angstrom,
n_atoms (M,) int64, homo_ev (M,) float64, index (M,) int64 QM9 `Index` (PyG's idx + 1).
A dataset's structures (load_dataset) have z, pos, n_atoms, index (the dataset's own id) and y (M,)
float64, the TARGET property; periodic ones also cell (M, 3, 3) float64, one lattice vector a row,
and name (M,), their names in the dataset.
"""
import importlib.util
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from ase.data import covalent_radii
from torch_geometric.utils import scatter

import coremof
from models import (ATOMIC_NUMBER, COINCIDENT_DISTANCE, PERIODIC_TABLE, atomic_numbers, edge_vectors,
                    neighbour_graph, type_index_table)
from utils import InputError, load_npz, save_npz, standardize, std_floor

HARTREE_TO_EV = 27.211386246  # CODATA 2018, the factor PyG's QM9 uses
QM9_CSV_FILES = ("qm9_part1.csv", "qm9_part2.csv", "qm9_part3.csv")
QM9_COLUMNS = ["Index", "N_atoms", "Elements", "XYZ_Ang", "HOMO_au"]
CACHE_NAME = "qm9_structures.npz"
CACHE_DTYPES = {"z": np.uint8, "pos": np.float32, "n_atoms": np.int64, "homo_ev": np.float64, "index": np.int64}


# --- parsing and the cache ---------------------------------------------------------

def qm9pack_csv_dir():
    """The data/ folder of the installed qm9pack wheel, found without importing the package."""
    spec = importlib.util.find_spec("qm9pack")
    if spec is None:
        raise InputError("package qm9pack is not installed: pip install -r requirements.txt")
    return Path(next(iter(spec.submodule_search_locations))) / "data"


def _first_five(frame, bad_rows):
    """QM9 Index of the first few rows flagged in `bad_rows`, for error messages."""
    return frame["Index"].to_numpy()[bad_rows][:5].tolist()


def _list_lengths(strings):
    """Number of comma-separated items in each list string."""
    return strings.str.count(",").to_numpy() + 1


def parse_qm9_csv(path):
    """One qm9pack CSV -> cache arrays. Coordinates may be written like `0.` or `1.2*^-6`."""
    try:
        frame = pd.read_csv(path, usecols=QM9_COLUMNS)
    except (OSError, ValueError, pd.errors.ParserError) as err:
        raise InputError(f"{path}: cannot read QM9 columns {QM9_COLUMNS} ({err})") from None
    n_atoms = frame["N_atoms"].to_numpy(np.int64)
    if (n_atoms < 1).any():
        raise InputError(f"{path}: molecules with no atoms (Index {_first_five(frame, n_atoms < 1)})")
    symbols = frame["Elements"].str.replace(r"[\[\]'\" ]", "", regex=True)
    coords = frame["XYZ_Ang"].str.replace("*^", "e", regex=False).str.replace(r"[\[\] ]", "", regex=True)
    for name, lengths, expected in (("Elements", _list_lengths(symbols), n_atoms),
                                    ("XYZ_Ang", _list_lengths(coords), 3 * n_atoms)):
        if (lengths != expected).any():
            raise InputError(f"{path}: {name} does not match N_atoms (Index {_first_five(frame, lengths != expected)})")
    flat_symbols = pd.Series(",".join(symbols).split(","))
    z = flat_symbols.map(ATOMIC_NUMBER)
    if z.isna().any():
        raise InputError(f"{path}: unknown element symbols {sorted(set(flat_symbols[z.isna()]))[:5]}")
    try:
        pos = np.array(",".join(coords).split(","), dtype=np.float64).reshape(-1, 3)
    except ValueError as err:
        raise InputError(f"{path}: XYZ_Ang holds a value that is not a number ({err})") from None
    return {
        "z": z.to_numpy(np.uint8),
        "pos": pos.astype(np.float32),
        "n_atoms": n_atoms,
        "homo_ev": frame["HOMO_au"].to_numpy(np.float64) * HARTREE_TO_EV,
        "index": frame["Index"].to_numpy(np.int64),
    }


def parse_qm9_csvs(csv_dir):
    """All qm9pack CSV parts in `csv_dir` -> one set of cache arrays, in file order."""
    paths = [Path(csv_dir) / name for name in QM9_CSV_FILES]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise InputError(f"QM9 CSV files not found: {missing}")
    parts = [parse_qm9_csv(p) for p in paths]
    return {key: np.concatenate([part[key] for part in parts]) for key in CACHE_DTYPES}


def validate_structures(arrays, source):
    """Check cache arrays for the keys, dtypes and consistency that everything downstream assumes."""
    missing = sorted(set(CACHE_DTYPES) - set(arrays))
    if missing:
        raise InputError(f"{source}: missing arrays {missing}; expected {sorted(CACHE_DTYPES)}")
    for key, dtype in CACHE_DTYPES.items():
        if arrays[key].dtype != dtype:
            raise InputError(f"{source}: array {key!r} has dtype {arrays[key].dtype}, expected {np.dtype(dtype)}")
    n_atoms, index = arrays["n_atoms"], arrays["index"]
    if not (len(n_atoms) == len(index) == len(arrays["homo_ev"])) or n_atoms.sum() != len(arrays["z"]) \
            or arrays["pos"].shape != (len(arrays["z"]), 3):
        raise InputError(f"{source}: array lengths disagree with n_atoms")
    if (n_atoms < 1).any():
        raise InputError(f"{source}: molecules with no atoms (Index {index[n_atoms < 1][:5].tolist()})")
    molecule_of_atom = np.repeat(np.arange(len(n_atoms)), n_atoms)
    bad_pos = ~np.isfinite(arrays["pos"]).all(axis=1)
    if bad_pos.any():
        raise InputError(f"{source}: non-finite coordinates (Index {index[molecule_of_atom[bad_pos]][:5].tolist()})")
    if not np.isfinite(arrays["homo_ev"]).all():
        raise InputError(f"{source}: non-finite HOMO values")
    return arrays


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
            raise InputError(f"{source}: structure {structure_label(arrays, structure)}: atoms {j - atom} and "
                             f"{i - atom} (0-based) are {distance:.2g} Angstrom apart; expected atoms at least "
                             f"{COINCIDENT_DISTANCE} Angstrom apart")


def structure_label(arrays, row):
    """How error messages name the structure at `row`: its name, else its index in the dataset."""
    return str(arrays["name"][row]) if "name" in arrays else f"with index {arrays['index'][row]}"


def load_qm9(data_root, csv_dir=None):
    """Cache arrays of all QM9 molecules: read from `data_root`, or parsed from the CSVs and cached there."""
    if Path(data_root).exists() and not Path(data_root).is_dir():
        raise InputError(f"DATA_ROOT {data_root}: a file, expected a folder for the QM9 cache")
    cache = Path(data_root) / CACHE_NAME
    if not cache.exists():
        arrays = validate_structures(parse_qm9_csvs(csv_dir or qm9pack_csv_dir()), "qm9pack CSVs")
        save_npz(cache, arrays, "QM9 cache")
        return arrays
    try:
        arrays = load_npz(cache, "QM9 cache")
    except InputError as err:
        raise InputError(f"{err}; delete it to rebuild the cache from the CSVs") from None
    return validate_structures(arrays, cache)


PER_ATOM_KEYS = ("z", "pos")  # every other array of a dataset has one entry per structure


def take_structures(arrays, rows):
    """The arrays of the structures at positions `rows`, in that order."""
    counts = arrays["n_atoms"][rows]
    first_atom = (np.cumsum(arrays["n_atoms"]) - arrays["n_atoms"])[rows]
    atom_rows = np.repeat(first_atom - (np.cumsum(counts) - counts), counts) + np.arange(counts.sum())
    return {key: value[atom_rows] if key in PER_ATOM_KEYS else value[rows] for key, value in arrays.items()}


def seeded_subset(arrays, max_structures, seed):
    """A seeded random subset of `max_structures` structures (kept in file order), or all if None."""
    total = len(arrays["n_atoms"])
    if max_structures is None:
        return arrays
    if not 1 <= max_structures <= total:
        raise InputError(f"max structures {max_structures}: expected 1..{total}, the size of the dataset")
    rows = np.sort(np.random.default_rng(seed).choice(total, max_structures, replace=False))
    return take_structures(arrays, rows)


# --- datasets ----------------------------------------------------------------------

QM9_TARGETS = {"homo": "eV"}  # TARGET name -> unit
QM9_ATOM_TYPES = ("H", "C", "N", "O", "F")  # QM9's elements in atomic-number order: what ATOM_TYPES=None gives
DATASET_TARGETS = {"qm9": QM9_TARGETS, "coremof": coremof.PROPERTY_UNITS}
PERIODIC_DATASETS = ("coremof",)  # crystals: periodic graphs, per-atom descriptors, atom-averaged latents


def check_dataset_settings(cfg):
    """DATASET, TARGET and HIST_ELEMENTS that can work, before any data is read."""
    if cfg.DATASET not in DATASET_TARGETS:
        raise InputError(f"DATASET={cfg.DATASET!r}: expected one of {list(DATASET_TARGETS)}")
    targets = DATASET_TARGETS[cfg.DATASET]
    if cfg.TARGET not in targets:
        raise InputError(f"TARGET={cfg.TARGET!r}: dataset {cfg.DATASET} has no such property; expected one of "
                         f"{list(targets)}")
    unknown = [symbol for symbol in cfg.HIST_ELEMENTS if symbol not in ATOMIC_NUMBER]
    if unknown or len(set(cfg.HIST_ELEMENTS)) != len(cfg.HIST_ELEMENTS):
        raise InputError(f"HIST_ELEMENTS={tuple(cfg.HIST_ELEMENTS)}: expected distinct element symbols")


def target_unit(cfg):
    return DATASET_TARGETS[cfg.DATASET][cfg.TARGET]


def load_dataset(cfg):
    """Every structure of cfg.DATASET, read from its cache under DATA_ROOT (built on first use), with
    the TARGET property as y."""
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


def dataset_atom_types(atom_types, arrays):
    """ATOM_TYPES, or for None every element in the dataset's structures, in atomic-number order."""
    if atom_types is not None:
        return tuple(atom_types)
    return tuple(PERIODIC_TABLE[number] for number in np.unique(arrays["z"]))


def drop_large_structures(arrays, max_atoms):
    """The structures of at most `max_atoms` atoms, and how many were dropped."""
    small = arrays["n_atoms"] <= max_atoms
    if small.all():
        return arrays, 0
    return take_structures(arrays, np.flatnonzero(small)), int((~small).sum())


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


# --- structure descriptors (self-supervised targets) --------------------------------

def num_pairs(num_types):
    """Number of unordered element pairs (H-H, H-C, ...) of `num_types` elements."""
    return num_types * (num_types + 1) // 2


def pair_row(type_a, type_b, num_types):
    """Row of the unordered pair (type_a, type_b) in the upper triangle of a num_types grid."""
    low, high = torch.minimum(type_a, type_b), torch.maximum(type_a, type_b)
    return low * num_types - low * (low - 1) // 2 + (high - low)


def histogram_classes(atom_types, hist_elements):
    """The element classes of the pair and angle histograms: the HIST_ELEMENTS that ATOM_TYPES holds,
    in that order, then one class "other" for all remaining ATOM_TYPES, if any (77 elements would
    make 3,003 pair histograms). Returns (class names, class of each ATOM_TYPES row (T,) int64)."""
    named = [symbol for symbol in hist_elements if symbol in atom_types]
    rest = [symbol for symbol in atom_types if symbol not in named]
    class_of_type = [named.index(symbol) if symbol in named else len(named) for symbol in atom_types]
    return named + ["other"] * bool(rest), torch.tensor(class_of_type)


def descriptor_sizes(cfg):
    """Width of each enabled descriptor group, always in the same order, whatever the order of
    cfg.DESCRIPTOR_WEIGHTS (a saved config may list its keys in another)."""
    num_types = len(cfg.ATOM_TYPES)
    num_classes = len(histogram_classes(cfg.ATOM_TYPES, cfg.HIST_ELEMENTS)[0])
    sizes = {"atom_counts": num_types, "distance_hist": cfg.DIST_HIST_BINS,
             "pair_hist": num_pairs(num_classes) * cfg.PAIR_HIST_BINS,
             "angle_hist": num_classes * num_pairs(num_classes) * cfg.ANGLE_HIST_BINS}
    unknown = sorted(set(cfg.DESCRIPTOR_WEIGHTS) - set(sizes))
    if unknown or not cfg.DESCRIPTOR_WEIGHTS:
        raise InputError(f"DESCRIPTOR_WEIGHTS keys {sorted(cfg.DESCRIPTOR_WEIGHTS)}: expected a non-empty "
                         f"subset of {list(sizes)}")
    return {name: size for name, size in sizes.items() if name in cfg.DESCRIPTOR_WEIGHTS}  # one fixed order


def check_histogram_settings(cfg):
    """Each histogram needs at least two bins over an increasing range of two values."""
    for name in ("DIST_HIST", "PAIR_HIST", "ANGLE_HIST"):
        value_range, bins = getattr(cfg, f"{name}_RANGE"), getattr(cfg, f"{name}_BINS")
        if len(value_range) != 2 or value_range[0] >= value_range[1] or bins < 2:
            raise InputError(f"{name}_RANGE={value_range}, {name}_BINS={bins}: expected (start, stop) with "
                             f"start < stop and at least 2 bins")


def _bin_width(value_range, bins):
    return (value_range[1] - value_range[0]) / (bins - 1)


def smeared_histogram(values, owner, num_owners, value_range, bins):
    """Sum over values of Gaussians (width = bin spacing) at `bins` centres in `value_range`,
    per owner: values (P,), owner (P,) -> (num_owners, bins)."""
    centres = torch.linspace(*value_range, bins, device=values.device, dtype=values.dtype)
    width = _bin_width(value_range, bins)
    gauss = torch.exp(-0.5 * ((values[:, None] - centres) / width) ** 2)
    return scatter(gauss, owner, dim=0, dim_size=num_owners, reduce="sum")


def bonds(types, pos, batch, atom_types, tolerance, cell=None):
    """Directed bonds: (bond_index (2, E) as (neighbour, centre), bond vectors (E, 3) from centre to
    neighbour, or to its periodic image): atom pairs closer than `tolerance` times the sum of their
    covalent radii (Cordero et al. 2008)."""
    radius = torch.as_tensor(covalent_radii[atomic_numbers(atom_types)], dtype=pos.dtype, device=pos.device)[types]
    edge_index, offset = neighbour_graph(pos, batch, 2 * tolerance * float(radius.max()), cell)
    neighbour, centre = edge_index
    vectors = edge_vectors(pos, edge_index, offset)
    bonded = vectors.norm(dim=1) < tolerance * (radius[neighbour] + radius[centre])
    return edge_index[:, bonded], vectors[bonded]


def bond_angles(bond_index, bond_vectors, num_atoms):
    """Every angle between two bonds of one centre atom, each unordered pair of bonds once:
    (centre (T,), first neighbour (T,), second neighbour (T,), angle (T,) in degrees)."""
    order = torch.argsort(bond_index[1], stable=True)
    neighbour, centre = bond_index[:, order]
    bond_vectors = bond_vectors[order]
    degree = torch.bincount(centre, minlength=num_atoms)
    first_bond = degree.cumsum(0) - degree
    # pair every bond with each bond of its centre (itself included), then keep each pair once
    repeats = degree[centre]
    bond_a = torch.repeat_interleave(torch.arange(len(centre), device=centre.device), repeats)
    offset = torch.arange(len(bond_a), device=centre.device) - (repeats.cumsum(0) - repeats)[bond_a]
    bond_b = first_bond[centre[bond_a]] + offset
    once = bond_a < bond_b
    bond_a, bond_b = bond_a[once], bond_b[once]
    u, v = bond_vectors[bond_a], bond_vectors[bond_b]
    angle = torch.rad2deg(torch.atan2(torch.linalg.cross(u, v).norm(dim=1), (u * v).sum(dim=1)))
    return centre[bond_a], neighbour[bond_a], neighbour[bond_b], angle


def structure_descriptors(types, pos, batch, num_molecules, cfg, cell=None):
    """Label-free descriptors of each structure, one (B, width) tensor per group of descriptor_sizes.

    atom_counts: atoms of each type. distance_hist: smeared histogram of all atom-pair distances.
    pair_hist: the same per unordered pair of histogram_classes (H-H, H-C, ...), which sees bond
    lengths. angle_hist: smeared histogram of bond angles per class triplet (centre, unordered pair
    of neighbours; H-C-H, C-C-O, ...), bonds as in `bonds`. A periodic structure (cell (B, 3, 3))
    counts pairs with every periodic image, and each group is divided by its atoms: its cell is one
    arbitrary choice of repeat unit, so a supercell has the descriptors of its unit cell."""
    num_types = len(cfg.ATOM_TYPES)
    class_names, class_of_type = histogram_classes(cfg.ATOM_TYPES, cfg.HIST_ELEMENTS)
    num_classes, classes = len(class_names), class_of_type.to(types.device)[types]
    reach = max(cfg.DIST_HIST_RANGE[1] + 3 * _bin_width(cfg.DIST_HIST_RANGE, cfg.DIST_HIST_BINS),
                cfg.PAIR_HIST_RANGE[1] + 3 * _bin_width(cfg.PAIR_HIST_RANGE, cfg.PAIR_HIST_BINS))  # farther: ~0
    edge_index, offset = neighbour_graph(pos, batch, reach, cell)
    if cell is None:
        edge_index = edge_index[:, edge_index[0] < edge_index[1]]  # each unordered pair once
    source, target = edge_index
    distance = edge_vectors(pos, edge_index, offset).norm(dim=1)
    molecule = batch[source]
    groups = {}
    for name in descriptor_sizes(cfg):
        if name == "atom_counts":
            one_hot = torch.nn.functional.one_hot(types, num_types).to(pos.dtype)
            groups[name] = scatter(one_hot, batch, dim=0, dim_size=num_molecules, reduce="sum")
        elif name == "distance_hist":
            groups[name] = smeared_histogram(distance, molecule, num_molecules, cfg.DIST_HIST_RANGE,
                                             cfg.DIST_HIST_BINS)
        elif name == "pair_hist":
            pairs = num_pairs(num_classes)
            hist = smeared_histogram(distance,
                                     molecule * pairs + pair_row(classes[source], classes[target], num_classes),
                                     num_molecules * pairs, cfg.PAIR_HIST_RANGE, cfg.PAIR_HIST_BINS)
            groups[name] = hist.reshape(num_molecules, pairs * cfg.PAIR_HIST_BINS)
        elif name == "angle_hist":
            centre, first, second, angle = bond_angles(
                *bonds(types, pos, batch, cfg.ATOM_TYPES, cfg.BOND_TOLERANCE, cell), len(pos))
            triplets = num_classes * num_pairs(num_classes)
            triplet = classes[centre] * num_pairs(num_classes) + pair_row(classes[first], classes[second],
                                                                          num_classes)
            hist = smeared_histogram(angle, batch[centre] * triplets + triplet, num_molecules * triplets,
                                     cfg.ANGLE_HIST_RANGE, cfg.ANGLE_HIST_BINS)
            groups[name] = hist.reshape(num_molecules, triplets * cfg.ANGLE_HIST_BINS)
    return groups if cell is None else per_atom(groups, batch, num_molecules)


PAIR_GROUPS = ("distance_hist", "pair_hist")  # periodic graphs hold each pair twice, once from either end


def per_atom(groups, batch, num_structures):
    """Descriptor groups of periodic structures divided by their atoms, pair groups also by 2."""
    atoms = torch.bincount(batch, minlength=num_structures)[:, None]  # int: the quotient keeps each group's dtype
    return {name: group / (atoms * (2 if name in PAIR_GROUPS else 1)) for name, group in groups.items()}


def compute_descriptors(structures, cfg):
    """Descriptors of every structure, concatenated: (M, total width), on the structures' device."""
    rows = torch.arange(structures.num_molecules, device=structures.z.device)
    chunks = []
    for chunk in structures.batches(rows, cfg.EVAL_BATCH_SIZE, cfg.BATCH_MAX_ATOMS):
        atoms, batch = structures.atoms_of(chunk)
        groups = structure_descriptors(structures.types[atoms], structures.pos[atoms], batch, len(chunk), cfg,
                                       structures.cells_of(chunk))
        chunks.append(torch.cat(list(groups.values()), dim=1))
    return torch.cat(chunks)


def standardize_targets(descriptors, fit_rows, sizes):
    """Descriptors standardized per column with statistics of `fit_rows`. A column's std is at least
    a tenth of the root-mean-square column std of its group: nearly empty bins (F-F pairs, distances
    shorter than any bond) would otherwise put rare molecules hundreds of std away and rule the loss.
    Returns (standardized, mean, std)."""
    column_std = descriptors[fit_rows].std(dim=0)
    floors = [std_floor(group).expand(len(group))
              for group in column_std.split(list(sizes.values()))]
    return standardize(descriptors, fit_rows, min_std=torch.cat(floors))
