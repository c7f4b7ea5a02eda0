"""A user's own structures: any file that ASE reads (extended XYZ, an ASE database, a trajectory,
multi-frame XYZ, CIF, ...), parsed once into a cache under DATA_ROOT. The cache's name holds the
file's content hash and the settings that shape it (TARGET, ASE_FORMAT), so an edited file is parsed
again.

Every structure of the file is kept, in file order, or the file is an input error that names the
structure by its structure_index, the 0-based position. A file holds either molecules (pbc all
False) or crystals (pbc all True and a cell of volume at least MIN_CELL_VOLUME), never both. The
label of a structure is atoms.info[TARGET], else its calculator's result TARGET (extended XYZ puts
`energy=` there), else none: NaN. A file where no structure has one is an unlabelled pool.

Cache arrays (M structures, A atoms): z (A,) uint8, pos (A, 3) float32 Angstrom, n_atoms (M,) int64,
index (M,) int64 (the position in the file), y (M,) float64 (NaN: no label); name (M,) str
(atoms.info["name"], "" where absent) where any structure has one; cell (M, 3, 3) float64 (one
lattice vector a row) for crystals.
"""
import hashlib
import json
from pathlib import Path

import ase.db
import ase.io
import numpy as np
from ase.io.formats import UnknownFileTypeError, filetype, ioformats
from tqdm import tqdm

from utils import InputError, cached_arrays, check_cache_arrays, first_line

MIN_CELL_VOLUME = 1.0  # cubic Angstrom; a real cell holds at least one atom (about 10)
CACHE_DTYPES = {"z": np.uint8, "pos": np.float32, "n_atoms": np.int64, "index": np.int64, "y": np.float64}
NAME_THE_FORMAT = "name it with --set ASE_FORMAT=FORMAT (extxyz, db, traj, cif, ...)"


def content_hash(path):
    """The SHA-256 of the file's bytes, as hex."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_readable(path):
    """The file can be opened and is not empty, before any data is read."""
    try:
        with open(path, "rb") as f:
            empty = not f.read(1)
    except OSError as err:
        raise InputError(f"{path}: cannot open ({err.strerror})") from None
    if empty:
        raise InputError(f"{path}: an empty file; expected one or more structures")


def file_format(path, ase_format):
    """ASE_FORMAT, or the format ASE tells from the file's name and content."""
    if ase_format is not None:
        if ase_format not in ioformats:
            raise InputError(f"ASE_FORMAT={ase_format!r}: not a format ASE knows; expected one such as extxyz, db, "
                             "traj or cif")
        return ase_format
    try:
        fmt = filetype(str(path))
    except UnknownFileTypeError as err:
        raise InputError(f"{path}: ASE cannot tell its format ({first_line(err)}); {NAME_THE_FORMAT}") from None
    if fmt not in ioformats:  # ASE falls back on the file's extension, which need not name a format
        raise InputError(f"{path}: ASE cannot tell its format (extension {fmt!r}); {NAME_THE_FORMAT}")
    return fmt


def frames(path, fmt):
    """The structures of the file, one Atoms at a time; an ASE database's key-value pairs go into
    atoms.info, as extended XYZ's comment-line keys do."""
    if fmt == "db":
        for row in ase.db.connect(str(path), type="db").select():
            atoms = row.toatoms()
            atoms.info.update(row.key_value_pairs)
            yield atoms
    else:
        yield from ase.io.iread(str(path), index=":", format=fmt)


def label(atoms, target):
    """atoms.info[target], else the calculator's result `target`, else NaN; ValueError if not a finite number."""
    calculator = atoms.calc.results if atoms.calc is not None else {}
    value = atoms.info.get(target, calculator.get(target))
    if value is None:
        return np.nan
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"label {target}={value!r} is not a number") from None
    if not np.isfinite(value):
        raise ValueError(f"label {target}={value} is not finite")
    return value


def periodic_cell(atoms):
    """The cell (3, 3) of a crystal, None for a molecule; ValueError for a partly periodic or flat one."""
    if not atoms.pbc.any():
        return None
    cell = np.array(atoms.cell[:], dtype=np.float64)
    if not atoms.pbc.all():
        raise ValueError(f"pbc {atoms.pbc.tolist()}; expected all True (a crystal) or all False (a molecule)")
    if not np.isfinite(cell).all() or abs(np.linalg.det(cell)) < MIN_CELL_VOLUME:
        raise ValueError(f"cell of volume {abs(np.linalg.det(cell)):.3g} cubic Angstrom (lengths and angles "
                         f"{np.round(atoms.cell.cellpar(), 3).tolist()}); expected at least {MIN_CELL_VOLUME}")
    return cell


def parse_structure(atoms, target):
    """(z (n,), pos (n, 3), cell (3, 3) or None, label, name) of one structure; ValueError says why not."""
    if len(atoms) == 0:
        raise ValueError("no atoms")
    if (atoms.numbers < 1).any():
        raise ValueError(f"atom {int(np.argmin(atoms.numbers))} (0-based) is a dummy atom (atomic number 0); "
                         "expected elements only")
    cell = periodic_cell(atoms)
    pos = atoms.get_positions(wrap=cell is not None)
    if not np.isfinite(pos).all():
        raise ValueError("non-finite coordinates")
    return atoms.numbers, pos, cell, label(atoms, target), str(atoms.info.get("name", ""))


def read_frames(path, fmt):
    """frames(path, fmt), a reader's failure an InputError that says how far it got."""
    count = 0
    try:
        for atoms in frames(path, fmt):
            yield atoms
            count += 1
    except Exception as err:  # ASE's readers raise whatever the bad line trips: value, key, index or format errors
        raise InputError(f"{path}: not readable as {fmt} after {count} structures ({type(err).__name__}: "
                         f"{first_line(err)}); if that is not its format, {NAME_THE_FORMAT}") from None


def parse_file(path, fmt, target, digest):
    """Cache arrays of every structure of the file, with a progress bar; its content_hash must still
    be `digest` afterwards."""
    parsed = []
    for position, atoms in enumerate(tqdm(read_frames(path, fmt), desc=f"parsing {Path(path).name}",
                                          unit=" structures", disable=None)):
        try:
            parsed.append(parse_structure(atoms, target))
        except ValueError as err:
            raise InputError(f"{path}: structure_index {position}: {err}") from None
    if content_hash(path) != digest:
        raise InputError(f"{path}: the file changed while it was parsed; parse it again once it is complete")
    if not parsed:
        raise InputError(f"{path}: no structures read as {fmt}; expected one or more; if that is not its format, "
                         f"{NAME_THE_FORMAT}")
    return stack(path, parsed)


def stack(path, parsed):
    """Cache arrays from the (z, pos, cell, label, name) of every structure, a file of one kind."""
    zs, positions, cells, labels, names = zip(*parsed)
    periodic = np.array([cell is not None for cell in cells])
    if periodic.any() and not periodic.all():
        first = int(np.flatnonzero(periodic != periodic[0])[0])
        kind = {True: "a crystal", False: "a molecule"}
        raise InputError(f"{path}: structure_index {first} is {kind[periodic[first]]} and structure_index 0 "
                         f"{kind[periodic[0]]}; expected all molecules (pbc False) or all crystals (pbc True, a cell)")
    arrays = {"z": np.concatenate(zs).astype(np.uint8), "pos": np.concatenate(positions).astype(np.float32),
              "n_atoms": np.array([len(z) for z in zs], dtype=np.int64),
              "index": np.arange(len(parsed), dtype=np.int64), "y": np.array(labels, dtype=np.float64)}
    if any(names):
        arrays["name"] = np.array(names)
    if periodic.all():
        arrays["cell"] = np.stack(cells)
    return arrays


def validate(arrays, source):
    """Check cache arrays for the keys, dtypes and lengths everything downstream assumes."""
    check_cache_arrays(arrays, source, CACHE_DTYPES)
    count = len(arrays["n_atoms"])
    per_structure = [key for key in ("index", "y", "name", "cell") if key in arrays and len(arrays[key]) != count]
    if per_structure or arrays["n_atoms"].sum() != len(arrays["z"]) or arrays["pos"].shape != (len(arrays["z"]), 3):
        raise InputError(f"{source}: array lengths disagree with n_atoms ({per_structure or 'z or pos'})")
    return arrays


def cache_name(path, digest, target, ase_format):
    """The cache of this file's content under these settings."""
    settings = hashlib.sha256(json.dumps([target, ase_format]).encode()).hexdigest()[:8]
    return f"file_{Path(path).stem}_{digest[:16]}_{settings}.npz"


def load_structure_file(data_root, path, target, ase_format, check):
    """Cache arrays of the structure file `path`: read from `data_root`, or parsed, passed to
    check(arrays) (which raises on bad structures) and cached there."""
    check_readable(path)
    fmt = file_format(path, ase_format)
    digest = content_hash(path)

    def parse():
        arrays = validate(parse_file(path, fmt, target, digest), path)
        check(arrays)
        return arrays
    return cached_arrays(data_root, cache_name(path, digest, target, ase_format), f"cache of {path}", validate,
                         parse, "structure file")
