"""CoRE MOF 2019 (all solvent removed, ASR): 12,020 metal-organic framework crystals from the core-mof
wheel, parsed once with gemmi into a cache under DATA_ROOT.

The wheel holds the CIFs in a tar.xz and one CSV row of Zeo++ pore geometry per structure. A CIF is
expanded to its full unit cell by its symmetry operations (a few files are not in P1). Structures
that cannot serve (a CIF that does not parse, no atoms, a singular cell, an unknown element, atoms
closer than MIN_ATOM_DISTANCE, no CSV row) are skipped; the cache lists each with its reason.

Cache arrays (M structures, A atoms): z (A,) uint8, pos (A, 3) float32 Cartesian Angstrom, n_atoms
(M,) int64, cell (M, 3, 3) float64 (one lattice vector a row: pos = fractional @ cell), index (M,)
int64 (row in the CSV), name (M,) str (CSV filename), one float64 (M,) array per PROPERTY_UNITS
key, and skipped_name, skipped_reason (S,) str.
"""
import tarfile
from pathlib import Path

import gemmi
import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

import utils
from graphs import periodic_radius_graph
from utils import InputError, cached_arrays, check_cache_arrays

ARCHIVE, TABLE = "2019-ASR.tar.xz", "2019-ASR.csv"
CACHE_NAME = "coremof2019_asr.npz"
# Zeo++ geometric properties of 2019-ASR.csv; cm3_g is the crystal density despite its name
PROPERTY_UNITS = {"LCD": "Angstrom", "PLD": "Angstrom", "LFPD": "Angstrom", "cm3_g": "g/cm3",
                  "ASA_m2_cm3": "m2/cm3", "ASA_m2_g": "m2/g", "NASA_m2_cm3": "m2/cm3", "NASA_m2_g": "m2/g",
                  "AV_VF": "void fraction", "AV_cm3_g": "cm3/g", "NAV_cm3_g": "cm3/g"}
MIN_CELL_VOLUME = 1.0  # cubic Angstrom; a real cell holds at least one atom (about 10)
MIN_ATOM_DISTANCE = 0.5  # Angstrom; no bond is this short (H2: 0.74): closer atoms are overlapping disorder sites
CACHE_DTYPES = {"z": np.uint8, "pos": np.float32, "n_atoms": np.int64, "cell": np.float64, "index": np.int64,
                **{name: np.float64 for name in PROPERTY_UNITS}}
TEXT_KEYS = ("name", "skipped_name", "skipped_reason")


def wheel_data_dir():
    """The data/ folder of the installed core-mof wheel."""
    return utils.wheel_data_dir("CoRE_MOF", "core-mof")


# --- one structure -----------------------------------------------------------------

def parse_cif(text):
    """A CIF's full unit cell: (z (n,) uint8, pos (n, 3) float64 Angstrom, cell (3, 3) float64),
    checked; a ValueError says why the structure cannot serve."""
    try:
        small = gemmi.make_small_structure_from_block(gemmi.cif.read_string(text).sole_block())
    except (RuntimeError, ValueError) as err:
        raise ValueError(f"not a readable CIF ({str(err).strip().splitlines()[0]})") from None
    sites = small.get_all_unit_cell_sites()
    if not sites:
        raise ValueError("no atoms")
    cell = np.array(small.cell.orth.mat, dtype=np.float64).T
    if not np.isfinite(cell).all() or abs(np.linalg.det(cell)) < MIN_CELL_VOLUME:
        raise ValueError(f"singular cell (lattice {small.cell.parameters})")
    z = np.array([site.element.atomic_number for site in sites])
    unknown = (z < 1) | (z > 118)
    if unknown.any():
        raise ValueError(f"unknown element {sites[int(np.argmax(unknown))].type_symbol!r}")
    pos = np.array([site.fract.tolist() for site in sites]) @ cell
    if not np.isfinite(pos).all():
        raise ValueError("non-finite coordinates")
    check_no_overlapping_atoms(pos, cell)
    return z.astype(np.uint8), pos, cell


def check_no_overlapping_atoms(pos, cell):
    """Raise a ValueError if two atoms (or an atom and an image of another) are closer than MIN_ATOM_DISTANCE."""
    pos, cell = torch.as_tensor(pos), torch.as_tensor(cell)
    close, offset = periodic_radius_graph(pos, torch.zeros(len(pos), dtype=torch.long), cell[None], MIN_ATOM_DISTANCE)
    if close.shape[1]:
        source, target = close[:, 0].tolist()
        distance = float((pos[source] + offset[0] - pos[target]).norm())
        raise ValueError(f"atoms {target} and {source} (0-based) are {distance:.2f} Angstrom apart, closer than "
                         f"{MIN_ATOM_DISTANCE}: overlapping sites")


# --- the whole set -------------------------------------------------------------------

def read_table(path):
    """The property table: {filename: row}, and the property columns as a float64 frame."""
    try:
        frame = pd.read_csv(path, usecols=["filename", *PROPERTY_UNITS])
    except (OSError, ValueError, pd.errors.ParserError) as err:
        raise InputError(f"{path}: cannot read columns {['filename', *PROPERTY_UNITS]} ({err})") from None
    repeated = frame["filename"][frame["filename"].duplicated()]
    if len(repeated):
        raise InputError(f"{path}: filenames listed twice: {repeated[:5].tolist()}")
    try:
        properties = frame[list(PROPERTY_UNITS)].astype(np.float64)
    except ValueError as err:
        raise InputError(f"{path}: a property value is not a number ({err})") from None
    return {name: row for row, name in enumerate(frame["filename"])}, properties


def cif_texts(archive):
    """(structure name, CIF text) of every .cif file in the tar archive, with a progress bar."""
    try:
        with tarfile.open(archive) as tar:
            for member in tqdm(tar, desc=f"parsing {Path(archive).name}", unit=" files", disable=None):
                if member.isfile() and member.name.endswith(".cif"):
                    yield Path(member.name).stem, tar.extractfile(member).read().decode("utf-8", "replace")
    except (OSError, tarfile.TarError, EOFError) as err:
        raise InputError(f"{archive}: not a readable tar archive ({err})") from None


def parse_archive(archive, table):
    """Cache arrays of every structure of `archive` that parses and has a row in `table`."""
    rows_of, properties = read_table(table)
    parsed, skipped = [], []
    for name, text in cif_texts(archive):
        if name not in rows_of:
            skipped.append((name, f"no row in {Path(table).name}"))
            continue
        try:
            parsed.append((name, rows_of[name], *parse_cif(text)))
        except ValueError as err:
            skipped.append((name, str(err)))
    if not parsed:
        raise InputError(f"{archive}: no structure parsed ({len(skipped)} skipped, e.g. {skipped[:1]})")
    names, rows, zs, positions, cells = zip(*parsed)
    rows = np.array(rows, dtype=np.int64)
    return {"z": np.concatenate(zs), "pos": np.concatenate(positions).astype(np.float32),
            "n_atoms": np.array([len(z) for z in zs], dtype=np.int64), "cell": np.stack(cells), "index": rows,
            "name": np.array(names), **{key: properties[key].to_numpy()[rows] for key in PROPERTY_UNITS},
            "skipped_name": np.array([name for name, _ in skipped], dtype=str),
            "skipped_reason": np.array([reason for _, reason in skipped], dtype=str)}


def validate(arrays, source):
    """Check cache arrays for the keys, dtypes and consistency everything downstream assumes."""
    check_cache_arrays(arrays, source, CACHE_DTYPES, TEXT_KEYS)
    n_atoms, count = arrays["n_atoms"], len(arrays["n_atoms"])
    per_structure = [key for key in ["cell", "index", "name", *PROPERTY_UNITS] if len(arrays[key]) != count]
    if per_structure or n_atoms.sum() != len(arrays["z"]) or arrays["pos"].shape != (len(arrays["z"]), 3) \
            or arrays["cell"].shape != (count, 3, 3):
        raise InputError(f"{source}: array lengths disagree with n_atoms ({per_structure or 'z, pos or cell'})")
    if (n_atoms < 1).any():
        raise InputError(f"{source}: structures with no atoms: {arrays['name'][n_atoms < 1][:5].tolist()}")
    volume = np.abs(np.linalg.det(arrays["cell"]))
    if not (volume >= MIN_CELL_VOLUME).all():
        raise InputError(f"{source}: singular cells: {arrays['name'][~(volume >= MIN_CELL_VOLUME)][:5].tolist()}")
    if not np.isfinite(arrays["pos"]).all():
        raise InputError(f"{source}: non-finite coordinates")
    return arrays


def load_coremof(data_root, data_dir=None):
    """Cache arrays of CoRE MOF 2019-ASR: read from `data_root`, or parsed from the wheel's files
    (or those in `data_dir`) and cached there."""
    def parse():
        source = Path(data_dir) if data_dir else wheel_data_dir()
        missing = [str(source / name) for name in (ARCHIVE, TABLE) if not (source / name).is_file()]
        if missing:
            raise InputError(f"CoRE MOF files not found: {missing}")
        return validate(parse_archive(source / ARCHIVE, source / TABLE), source / ARCHIVE)
    return cached_arrays(data_root, CACHE_NAME, "CoRE MOF cache", validate, parse, "CIFs")
