"""The self-supervised targets: label-free descriptors of each structure, computed from its atoms
alone, that the encoder learns to reproduce from its latent. Groups: atom_counts (per element),
distance_hist (all pairs, Gaussian-smeared), pair_hist (per element pair, bonded range) and
angle_hist (bond angles per centre element and neighbour pair). Periodic structures count pairs
with every image and are divided per atom.

Shapes: a batch of B structures with A atoms; types (A,) row of ATOM_TYPES per atom, pos (A, 3),
batch (A,); each group is (B, columns).
"""
import torch
from ase.data import covalent_radii
from torch_geometric.utils import scatter

from graphs import atomic_numbers, edge_vectors, neighbour_graph
from utils import InputError, standardize, std_floor


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
