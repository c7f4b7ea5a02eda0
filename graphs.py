"""Elements and neighbour lists: the element table, and the edges of molecules (all pairs within a
cutoff) and of periodic crystals (pairs under the lattice translations, with integer cell shifts).

Shapes: a batch of B structures with A atoms in all is pos (A, 3) in Angstrom, batch (A,) structure
of each atom, sorted, and for periodic structures cell (B, 3, 3), one lattice vector a row (None for
molecules); E is the number of directed edges.
"""
import numpy as np
import torch
import vesin
from vesin_torch import NeighborList

from utils import InputError

PERIODIC_TABLE = (
    "X H He Li Be B C N O F Ne Na Mg Al Si P S Cl Ar K Ca Sc Ti V Cr Mn Fe Co Ni Cu Zn Ga Ge As Se Br Kr "
    "Rb Sr Y Zr Nb Mo Tc Ru Rh Pd Ag Cd In Sn Sb Te I Xe Cs Ba La Ce Pr Nd Pm Sm Eu Gd Tb Dy Ho Er Tm Yb "
    "Lu Hf Ta W Re Os Ir Pt Au Hg Tl Pb Bi Po At Rn Fr Ra Ac Th Pa U Np Pu Am Cm Bk Cf Es Fm Md No Lr Rf "
    "Db Sg Bh Hs Mt Ds Rg Cn Nh Fl Mc Lv Ts Og"
).split()  # index = atomic number
ATOMIC_NUMBER = {symbol: number for number, symbol in enumerate(PERIODIC_TABLE) if number > 0}

COINCIDENT_DISTANCE = 0.01  # Angstrom; no two atoms of a real structure come this close (H-H is 0.74)
MIN_SEARCH_RADIUS = 1.0  # Angstrom; vesin is 8 times slower at 0.01 than here: search this far, then filter


def atomic_numbers(atom_types):
    """Atomic numbers of element symbols, e.g. ("H", "C") -> [1, 6]."""
    unknown = [s for s in atom_types if s not in ATOMIC_NUMBER]
    if unknown:
        raise InputError(f"ATOM_TYPES has unknown element symbols {unknown}")
    repeated = sorted({s for s in atom_types if list(atom_types).count(s) > 1})
    if repeated:
        raise InputError(f"ATOM_TYPES lists {repeated} more than once; expected each element once")
    return [ATOMIC_NUMBER[s] for s in atom_types]


def type_index_table(atom_types):
    """Atomic number -> row of `atom_types` (len(PERIODIC_TABLE),), -1 for any other element."""
    table = torch.full((len(PERIODIC_TABLE),), -1, dtype=torch.long)
    table[atomic_numbers(atom_types)] = torch.arange(len(atom_types))
    return table


def radius_graph(pos, batch, cutoff):
    """Directed edges (2, E) as (source, target) between distinct atoms of one molecule closer
    than `cutoff`, both directions. Molecules are small, so every pair inside each molecule is
    compared on a padded (B, n_max, n_max) grid; padding slots are NaN and so never close."""
    counts = torch.bincount(batch)
    first_atom = counts.cumsum(0) - counts
    slot = torch.arange(len(batch), device=pos.device) - first_atom[batch]
    padded = pos.new_full((len(counts), int(counts.max()), 3), float("nan"))
    padded[batch, slot] = pos
    dist = (padded[:, :, None, :] - padded[:, None, :, :]).norm(dim=-1)
    close = dist < cutoff
    close.diagonal(dim1=1, dim2=2).fill_(False)
    molecule, target, source = close.nonzero(as_tuple=True)
    return torch.stack([first_atom[molecule] + source, first_atom[molecule] + target])


def periodic_radius_graph(pos, batch, cell, cutoff):
    """Directed edges between atoms of one periodic structure closer than `cutoff` under the lattice
    translations of its cell, an atom and its own images included: (edge_index (2, E) as (source,
    target), offset (E, 3)), the edge vector being pos[source] + offset - pos[target], with offset =
    S @ cell for the integer cell shift S of the source's image. A cell thinner than the cutoff
    gives shifts of 2 or more. vesin builds each structure's list; the edges are sorted by (target,
    source, shift), so the graph and every sum over it are the same whatever the library's threads."""
    counts = torch.bincount(batch, minlength=len(cell)).tolist()
    first_atoms = torch.tensor([0, *counts[:-1]]).cumsum(0).tolist()
    edge_index, offsets = [torch.zeros(2, 0, dtype=torch.long, device=pos.device)], [pos.new_zeros(0, 3)]
    for structure_cell, first_atom, count in zip(cell, first_atoms, counts):
        target, source, shift = neighbour_list(pos[first_atom:first_atom + count].detach(), structure_cell.detach(),
                                               cutoff)
        if len(target):
            order = torch.argsort(edge_sort_key(target, source, shift, count), stable=True)
            edge_index.append(torch.stack([source[order], target[order]]) + first_atom)
            offsets.append(shift[order].to(pos.dtype) @ structure_cell)
    return torch.cat(edge_index, dim=1), torch.cat(offsets)


def neighbour_list(pos, cell, cutoff):
    """vesin's full periodic neighbour list of one structure, on pos's device: (i (E,), j (E,), S (E, 3)),
    int64, with pos[j] + S @ cell - pos[i] shorter than `cutoff`. On the CPU vesin's numpy build,
    4.7 times faster than its torch build there (benchmarks/results/coremof_io_cpu.json)."""
    search = max(cutoff, MIN_SEARCH_RADIUS)
    if pos.device.type == "cpu":
        i, j, shift, distance = vesin.NeighborList(cutoff=search, full_list=True).compute(
            points=pos.double().numpy(), box=cell.double().numpy(), periodic=True, quantities="ijSd")
        i, j, shift = (torch.from_numpy(column.astype(np.int64)) for column in (i, j, shift))
        distance = torch.from_numpy(distance)
    else:
        i, j, shift, distance = NeighborList(cutoff=search, full_list=True).compute(
            points=pos, box=cell, periodic=True, quantities="ijSd")
        i, j, shift = i.long(), j.long(), shift.long()
    close = distance < cutoff
    return i[close], j[close], shift[close]


def edge_sort_key(target, source, shift, num_atoms):
    """One int64 per edge (E,) that orders edges by (target, source, shift); all int64."""
    shift = shift - shift.min()
    span = int(shift.max()) + 1
    packed_shift = (shift[:, 0] * span + shift[:, 1]) * span + shift[:, 2]
    return (target * num_atoms + source) * span**3 + packed_shift


def neighbour_graph(pos, batch, cutoff, cell=None):
    """(edge_index (2, E), offset (E, 3) or None): radius_graph for molecules (cell None),
    periodic_radius_graph for periodic structures."""
    if cell is None:
        return radius_graph(pos, batch, cutoff), None
    return periodic_radius_graph(pos, batch, cell, cutoff)


def edge_vectors(pos, edge_index, offset):
    """(E, 3) vectors from each edge's target to its source (or to the source's periodic image)."""
    source, target = edge_index
    vectors = pos[source] - pos[target]
    return vectors if offset is None else vectors + offset
