"""QM9 (130,831 small organic molecules, DFT B3LYP/6-31G(2df,p)) from the qm9pack wheel: its CSVs are
parsed once into a cache under DATA_ROOT.

Cache arrays (M molecules, A atoms): z (A,) uint8 atomic numbers, pos (A, 3) float32 Angstrom,
n_atoms (M,) int64, homo_ev (M,) float64, index (M,) int64 QM9 `Index` (PyG's idx + 1).
"""
from pathlib import Path

import numpy as np
import pandas as pd

from graphs import ATOMIC_NUMBER
from utils import InputError, cached_arrays, check_cache_arrays, wheel_data_dir

HARTREE_TO_EV = 27.211386246  # CODATA 2018, the factor PyG's QM9 uses

QM9_CSV_FILES = ("qm9_part1.csv", "qm9_part2.csv", "qm9_part3.csv")

QM9_COLUMNS = ["Index", "N_atoms", "Elements", "XYZ_Ang", "HOMO_au"]

CACHE_NAME = "qm9_structures.npz"

CACHE_DTYPES = {"z": np.uint8, "pos": np.float32, "n_atoms": np.int64, "homo_ev": np.float64, "index": np.int64}


def qm9pack_csv_dir():
    """The data/ folder of the installed qm9pack wheel."""
    return wheel_data_dir("qm9pack", "qm9pack")


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
    check_cache_arrays(arrays, source, CACHE_DTYPES)
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


def load_qm9(data_root, csv_dir=None):
    """Cache arrays of all QM9 molecules: read from `data_root`, or parsed from the CSVs and cached there."""
    def parse():
        return validate_structures(parse_qm9_csvs(csv_dir or qm9pack_csv_dir()), "qm9pack CSVs")
    return cached_arrays(data_root, CACHE_NAME, "QM9 cache", validate_structures, parse, "CSVs")

QM9_TARGETS = {"homo": "eV"}  # TARGET name -> unit

QM9_ATOM_TYPES = ("H", "C", "N", "O", "F")  # QM9's elements in atomic-number order: what ATOM_TYPES=None gives
