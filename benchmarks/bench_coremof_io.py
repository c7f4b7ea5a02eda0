"""Reading CoRE MOF 2019-ASR crystal structures on the CPU: CIF parsing and periodic neighbour lists.

Data: the 12,020 CIF files of `2019-ASR.tar.xz` in the `core-mof` wheel, all read into memory first
(the time to decompress the whole archive is reported once, as extract_all_seconds).

1. CIF parsing of a seeded random sample of --files CIFs, text to atoms of the full unit cell, by
   gemmi (read_string, make_small_structure_from_block, get_all_unit_cell_sites, orthogonalize),
   ASE (ase.io.read) and pymatgen (Structure.from_str). ASE's reader checks every new atom against
   all earlier ones (time ~ atoms squared: seconds for a 600-atom cell), so it reads only the first
   --ase-files files of the sample; every parser is also timed on that subset. Reported: files/s
   (best of --repeats passes, the parsers interleaved), failures with their reason, disagreements
   with gemmi (atom count, lattice parameters to 1e-4, elements and fractional coordinates mod 1 to
   1e-3, matched as sets), and files with duplicate atoms (two atoms closer than 0.1 Angstrom under
   periodic images). The non-P1 files and the one with an unquoted `P 1` space group are read by
   every parser on their own as well.
2. Full periodic neighbour lists (both directions, an atom's own periodic images included) at
   5 Angstrom of a seeded sample of --structures structures parsed by gemmi, by vesin (numpy),
   vesin-torch (float64 tensors), ase.neighborlist.neighbor_list and matscipy's neighbour_list:
   edges/s and structures/s (best of --repeats, interleaved), and whether every library returns
   the same set of (i, j, S) triples for every structure.

    python benchmarks/bench_coremof_io.py --out benchmarks/results/coremof_io_cpu.json

With the defaults this takes about 9 minutes on 2 CPU cores, two thirds of it ASE's CIF reader.
"""
import argparse
import importlib.metadata
import importlib.util
import io
import json
import os
import re
import sys
import tarfile
import time
import warnings
from collections import namedtuple
from pathlib import Path

import ase
import ase.io
import gemmi
import numpy as np
import torch
import vesin
from ase.neighborlist import neighbor_list as ase_neighbor_list
from matscipy.neighbours import neighbour_list as matscipy_neighbour_list
from pymatgen.core import Structure
from scipy.spatial import cKDTree
from vesin_torch import NeighborList as TorchNeighborList

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the package modules live in the repo root

from cli import run_cli, run_metadata  # noqa: E402
from utils import InputError, first_line, write_text  # noqa: E402

ARCHIVE = "2019-ASR.tar.xz"
CUTOFF = 5.0  # Angstrom, neighbour lists
CELL_TOLERANCE = 1e-4  # lattice lengths (Angstrom) and angles (degrees)
FRACTIONAL_TOLERANCE = 1e-3  # each fractional coordinate, mod 1
DUPLICATE_DISTANCE = 0.1  # Angstrom
PACKAGES = ["core-mof", "gemmi", "ase", "pymatgen-core", "vesin", "vesin-torch", "matscipy", "scipy"]

Crystal = namedtuple("Crystal", "symbols frac cart box")  # (n,) str, (n, 3), (n, 3) Angstrom, (3, 3) rows a, b, c


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=300, help="seeded random CIF files to parse")
    parser.add_argument("--ase-files", type=int, default=40, help="the first of those that ASE parses too")
    parser.add_argument("--structures", type=int, default=100, help="seeded random parsed structures for the "
                        "neighbour lists")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes per parser and library, interleaved")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="also write the results here (JSON)")
    args = parser.parse_args(argv)
    if not 0 < args.ase_files <= args.files:
        parser.error("--ase-files must be between 1 and --files")
    if args.structures < 1 or args.repeats < 1:
        parser.error("--structures and --repeats must be positive")
    return args


# --- the archive -------------------------------------------------------------------------

def archive_path():
    """The wheel's 2019-ASR archive, found without importing the package."""
    package_dir = Path(next(iter(importlib.util.find_spec("CoRE_MOF").submodule_search_locations)))
    return package_dir / "data" / ARCHIVE


def read_archive(path):
    """{file name: CIF text} of every file in the tar.xz archive."""
    with tarfile.open(path) as archive:
        return {Path(member.name).name: archive.extractfile(member).read().decode()
                for member in archive if member.isfile()}


def space_group(text):
    """The `_symmetry_space_group_name_H-M` value as written (quotes kept), or None."""
    match = re.search(r"^_symmetry_space_group_name_H-M[ \t]+([^\r\n]*)", text, re.MULTILINE)
    return match and match.group(1).strip()


def special_files(texts):
    """{file name: space group} of the files whose space group is not written as a quoted P1."""
    return {name: group for name, text in texts.items()
            if (group := space_group(text)) not in ("'P1'", '"P1"', "'P 1'", '"P 1"')}


# --- CIF parsers: text to the atoms of the full unit cell -----------------------------------

def parse_gemmi(text):
    small = gemmi.make_small_structure_from_block(gemmi.cif.read_string(text).sole_block())
    sites = small.get_all_unit_cell_sites()
    cart = np.array([small.cell.orthogonalize(site.fract).tolist() for site in sites]).reshape(-1, 3)
    return Crystal(np.array([site.element.name for site in sites]), np.array([site.fract.tolist() for site in sites]),
                   cart, np.array(small.cell.orth.mat).T)


def parse_ase(text):
    atoms = ase.io.read(io.StringIO(text), format="cif")
    return Crystal(np.array(atoms.get_chemical_symbols()), atoms.get_scaled_positions(wrap=False), atoms.positions,
                   atoms.cell.array)


def parse_pymatgen(text):
    structure = Structure.from_str(text, fmt="cif")
    return Crystal(np.array([species.symbol for species in structure.species]), structure.frac_coords,
                   structure.cart_coords, structure.lattice.matrix)


PARSERS = {"gemmi": parse_gemmi, "ase": parse_ase, "pymatgen": parse_pymatgen}


def parse_all(parse, texts):
    """Seconds to parse every text, the crystals {name: Crystal} and the failures {name: reason}."""
    crystals, failures = {}, {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pymatgen and ASE warn about CIF details they fix up
        start = time.perf_counter()
        for name, text in texts.items():
            try:
                crystals[name] = parse(text)
            except Exception as err:  # a parser rejecting a file is a result, not an error
                failures[name] = f"{type(err).__name__}: {first_line(err)}"
        seconds = time.perf_counter() - start
    return seconds, crystals, failures


# --- comparing parsed crystals -----------------------------------------------------------

def cell_parameters(box):
    """a, b, c (Angstrom), alpha, beta, gamma (degrees) of the lattice vectors (rows of box)."""
    lengths = np.linalg.norm(box, axis=1)
    cosines = [box[1] @ box[2] / (lengths[1] * lengths[2]), box[0] @ box[2] / (lengths[0] * lengths[2]),
               box[0] @ box[1] / (lengths[0] * lengths[1])]
    return np.concatenate([lengths, np.degrees(np.arccos(np.clip(cosines, -1.0, 1.0)))])


def wrapped(frac):
    """Fractional coordinates mod 1, in [0, 1)."""
    frac = np.mod(frac, 1.0)
    frac[frac >= 1.0] = 0.0  # -1e-17 mod 1 rounds to 1.0
    return frac


def all_matched(frac, others):
    """Whether each point of frac (in [0, 1)) has a point of others within the tolerance, periodically."""
    distances, _ = cKDTree(others, boxsize=1.0).query(frac, p=np.inf, distance_upper_bound=FRACTIONAL_TOLERANCE)
    return bool(np.all(np.isfinite(distances)))


def same_atoms(first, second):
    """Same elements with the same fractional coordinates mod 1, as sets (each atom of either crystal
    has an atom of its element in the other one within the tolerance), and the same count per element."""
    for element in np.union1d(first.symbols, second.symbols):
        a, b = wrapped(first.frac[first.symbols == element]), wrapped(second.frac[second.symbols == element])
        if len(a) != len(b) or not (all_matched(a, b) and all_matched(b, a)):
            return False
    return True


def disagreement(reference, crystal):
    """Why crystal differs from reference (atom count, cell, atoms), or None when it does not."""
    if len(crystal.symbols) != len(reference.symbols):
        return f"{len(crystal.symbols)} atoms, gemmi {len(reference.symbols)}"
    cell_difference = np.abs(cell_parameters(crystal.box) - cell_parameters(reference.box)).max()
    if cell_difference > CELL_TOLERANCE:
        return f"lattice parameters differ by up to {cell_difference:.2g}"
    if not same_atoms(reference, crystal):
        return "same count and cell, different elements or fractional coordinates"
    return None


def close_pairs(crystal):
    """Pairs of atoms closer than DUPLICATE_DISTANCE, periodic images included."""
    (i,) = vesin.NeighborList(cutoff=DUPLICATE_DISTANCE, full_list=False).compute(
        crystal.cart, crystal.box, periodic=True, quantities="i")
    return len(i)


def check_crystals(crystals, reference):
    """Disagreements with the reference crystals {name: reason} and close-pair counts {name: pairs}."""
    disagreements = {name: reason for name, crystal in crystals.items() if name in reference
                     and (reason := disagreement(reference[name], crystal))}
    duplicates = {name: pairs for name, crystal in crystals.items() if (pairs := close_pairs(crystal))}
    return disagreements, duplicates


# --- 1. parsing --------------------------------------------------------------------------

def time_parsers(texts, ase_files, repeats):
    """Parse the first ase_files texts with every parser and the rest with all but ASE, repeats times,
    interleaved. Seconds {parser: {"subset"|"rest": [per repeat]}}, crystals and failures {parser: {name: ...}}."""
    names = list(texts)
    parts = {"subset": {name: texts[name] for name in names[:ase_files]},
             "rest": {name: texts[name] for name in names[ase_files:]}}
    seconds = {parser: {"subset": [], "rest": []} for parser in PARSERS}
    crystals = {parser: {} for parser in PARSERS}
    failures = {parser: {} for parser in PARSERS}
    for _ in range(repeats):
        for parser, parse in PARSERS.items():
            for part, part_texts in parts.items():
                if parser == "ase" and part == "rest":
                    continue
                took, crystals_of_part, failures_of_part = parse_all(parse, part_texts)
                seconds[parser][part].append(took)
                crystals[parser].update(crystals_of_part)
                failures[parser].update(failures_of_part)
    return seconds, crystals, failures


def parsing_benchmark(texts, ase_files, repeats):
    seconds, crystals, failures = time_parsers(texts, ase_files, repeats)
    files_per_s = {parser: len(texts) / min(np.add(times["subset"], times["rest"]))
                   for parser, times in seconds.items() if parser != "ase"}
    subset_files_per_s = {parser: ase_files / min(times["subset"]) for parser, times in seconds.items()}
    checks = {parser: check_crystals(crystals[parser], crystals["gemmi"]) for parser in PARSERS}
    return {
        "files": len(texts),
        "ase_files": ase_files,
        "files_per_s": files_per_s,
        "files_per_s_on_ase_files": subset_files_per_s,
        "seconds": seconds,
        "parsed": {parser: len(parsed) for parser, parsed in crystals.items()},
        "failures": failures,
        "disagreements_with_gemmi": {parser: check[0] for parser, check in checks.items() if parser != "gemmi"},
        "files_with_duplicate_atoms": {parser: len(check[1]) for parser, check in checks.items()},
        "duplicate_atom_pairs": {parser: check[1] for parser, check in checks.items()},
    }, crystals["gemmi"]


def special_file_report(texts, groups):
    """Every parser on each file: its space group, the atoms each parser finds (or why it fails),
    disagreements with gemmi (where gemmi reads the file) and close pairs."""
    report = {}
    for name, group in groups.items():
        results = {parser: parse_all(parse, {name: texts[name]})[1:] for parser, parse in PARSERS.items()}
        reference = results["gemmi"][0].get(name)
        atoms, disagreements, duplicates = {}, {}, {}
        for parser, (crystals, failures) in results.items():
            if name in failures:
                atoms[parser] = failures[name]
                continue
            atoms[parser] = len(crystals[name].symbols)
            duplicates[parser] = close_pairs(crystals[name])
            if parser != "gemmi" and reference is not None:
                disagreements[parser] = disagreement(reference, crystals[name])
        report[name] = {"space_group": group, "atoms": atoms, "disagreements_with_gemmi": disagreements,
                        "close_pairs": duplicates}
    return report


# --- 2. neighbour lists ----------------------------------------------------------------

def numpy_system(crystal):
    return crystal.cart, crystal.box


def torch_system(crystal):
    return torch.tensor(crystal.cart, dtype=torch.float64), torch.tensor(crystal.box, dtype=torch.float64)


def atoms_system(crystal):
    return ase.Atoms(symbols=list(crystal.symbols), positions=crystal.cart, cell=crystal.box, pbc=True)


def vesin_numpy(system):
    points, box = system
    return vesin.NeighborList(cutoff=CUTOFF, full_list=True).compute(points, box, periodic=True, quantities="ijS")


def vesin_torch(system):
    points, box = system
    return TorchNeighborList(cutoff=CUTOFF, full_list=True).compute(points, box, periodic=True, quantities="ijS")


def ase_neighbours(atoms):
    return ase_neighbor_list("ijS", atoms, CUTOFF)


def matscipy_neighbours(atoms):
    return matscipy_neighbour_list("ijS", atoms, CUTOFF)


NEIGHBOUR_LISTS = {  # name: (input from a Crystal, built untimed; the timed list (i, j, S))
    "vesin": (numpy_system, vesin_numpy),
    "vesin.torch": (torch_system, vesin_torch),
    "ase": (atoms_system, ase_neighbours),
    "matscipy": (atoms_system, matscipy_neighbours),
}


def edge_set(i, j, shifts):
    """The (i, j, S) triples as an int64 (edges, 5) array in lexicographic order."""
    rows = np.column_stack([np.asarray(i), np.asarray(j), np.asarray(shifts)]).astype(np.int64)
    return rows[np.lexsort(rows.T[::-1])]


def time_neighbour_lists(crystals, repeats):
    """Seconds {library: [per repeat]} over all crystals, interleaved, and each library's last
    edge sets {library: [per crystal]}."""
    systems = {name: [prepare(crystal) for crystal in crystals] for name, (prepare, _) in NEIGHBOUR_LISTS.items()}
    seconds = {name: [] for name in NEIGHBOUR_LISTS}
    outputs = {}
    for _ in range(repeats):
        for name, (_, compute) in NEIGHBOUR_LISTS.items():
            start = time.perf_counter()
            outputs[name] = [compute(system) for system in systems[name]]
            seconds[name].append(time.perf_counter() - start)
    edges = {name: [edge_set(*(np.asarray(part) for part in result)) for result in results]
             for name, results in outputs.items()}
    return seconds, edges


def distribution(values):
    return {"median": float(np.median(values)), "p90": float(np.percentile(values, 90)), "max": int(np.max(values))}


def neighbour_list_benchmark(crystals, repeats):
    seconds, edges = time_neighbour_lists(crystals, repeats)
    reference = edges["vesin"]
    edge_counts = [len(rows) for rows in reference]
    total_edges = sum(edge_counts)
    return {
        "cutoff": CUTOFF,
        "structures": len(crystals),
        "atoms_per_structure": distribution([len(crystal.symbols) for crystal in crystals]),
        "edges_per_structure": distribution(edge_counts),
        "edges_per_s": {name: total_edges / min(times) for name, times in seconds.items()},
        "structures_per_s": {name: len(crystals) / min(times) for name, times in seconds.items()},
        "seconds": seconds,
        "structures_differing_from_vesin": {name: sum(not np.array_equal(rows, ref) for rows, ref
                                                      in zip(library_edges, reference))
                                            for name, library_edges in edges.items() if name != "vesin"},
    }


# --- main ------------------------------------------------------------------------------

def print_summary(results):
    parsing, lists = results["parsing"], results["neighbour_lists"]
    print(f"extracting all {results['archive']['files']} files: {results['archive']['extract_all_seconds']:.1f} s")
    print(f"{'parser':<10} {'files/s':>9} {'on ASE files':>13} {'failed':>7} {'differ':>7} {'duplicates':>11}")
    for parser in PARSERS:
        rate = parsing["files_per_s"].get(parser, float("nan"))
        print(f"{parser:<10} {rate:9.1f} {parsing['files_per_s_on_ase_files'][parser]:13.1f} "
              f"{len(parsing['failures'][parser]):7d} {len(parsing['disagreements_with_gemmi'].get(parser, {})):7d} "
              f"{parsing['files_with_duplicate_atoms'][parser]:11d}")
    for name, report in results["special_files"].items():
        print(f"{name:<30} {report['space_group']:<10} {report['atoms']}")
    print(f"{'library':<12} {'edges/s':>12} {'structures/s':>13} {'differ':>7}  ({lists['structures']} structures, "
          f"{lists['cutoff']} A, {results['run']['torch_threads']} torch threads)")
    for name, rate in lists["edges_per_s"].items():
        print(f"{name:<12} {rate:12.3g} {lists['structures_per_s'][name]:13.2f} "
              f"{lists['structures_differing_from_vesin'].get(name, 0):7d}")


def main(argv=None):
    args = parse_args(argv)
    path = archive_path()
    start = time.perf_counter()
    texts = read_archive(path)
    extract_seconds = time.perf_counter() - start
    if args.files > len(texts):
        raise InputError(f"--files {args.files}: the archive holds {len(texts)} files")
    rng = np.random.default_rng(args.seed)
    names = sorted(texts)
    sample = {names[k]: texts[names[k]] for k in rng.choice(len(names), args.files, replace=False)}
    groups = special_files(texts)
    parsing, gemmi_crystals = parsing_benchmark(sample, args.ase_files, args.repeats)
    parsed = list(gemmi_crystals.values())
    if args.structures > len(parsed):
        raise InputError(f"--structures {args.structures}: gemmi parsed only {len(parsed)} of the files")
    structures = [parsed[k] for k in rng.choice(len(parsed), args.structures, replace=False)]
    results = {
        "run": {**run_metadata(), "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
                "library_versions": {name: importlib.metadata.version(name) for name in PACKAGES},
                "files": args.files, "ase_files": args.ase_files, "structures": args.structures,
                "repeats": args.repeats, "seed": args.seed},
        "archive": {"path": str(path), "files": len(texts), "extract_all_seconds": extract_seconds,
                    "space_group_not_quoted_p1": groups},
        "parsing": parsing,
        "special_files": special_file_report(texts, groups),
        "neighbour_lists": neighbour_list_benchmark(structures, args.repeats),
    }
    print_summary(results)
    if args.out:
        write_text(args.out, json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    run_cli(main)
