"""Per-atom local-environment targets: each atom's SOAP or ACSF descriptor (dscribe), for molecules
and periodic cells, that the encoder learns to predict from each atom's readout features. They are
built once per set of structures and settings, with a progress bar, cached under DATA_ROOT, and
standardized per column with the training atoms' statistics. The cache and the standardisation
serve a frozen teacher's per-atom features too (teacher_targets.py).

Shapes: A atoms in all; the targets are (A, atom_target_width(cfg)), in the atoms' order.
"""
import hashlib
import json

import numpy as np
import torch
from ase import Atoms
from tqdm import tqdm

from descriptors import histogram_classes
from graphs import ATOMIC_NUMBER, type_index_table
from utils import InputError, cached_arrays, check_cache_arrays, standardize, std_floor

ATOM_DESCRIPTORS = ("soap", "acsf")
SOAP_COMPRESSION = "crossover"  # only same-species density pairs: the width grows with species, not their square
ACSF_G2 = [[eta, 0.0] for eta in (0.01, 0.05, 0.1, 0.3, 0.6, 1.0, 2.0, 4.0)]  # radial: [eta (1/A^2), centre]
ACSF_G4 = [[eta, zeta, sign] for eta in (0.005, 0.05) for zeta in (1.0, 4.0) for sign in (1.0, -1.0)]  # angular


def check_atom_descriptor(cfg):
    if cfg.ATOM_DESCRIPTOR not in ATOM_DESCRIPTORS:
        raise InputError(f"ATOM_DESCRIPTOR={cfg.ATOM_DESCRIPTOR!r}: expected one of {list(ATOM_DESCRIPTORS)}")


def species_numbers(cfg):
    """The atomic number dscribe sees for each ATOM_TYPES row (T,): the HIST_ELEMENTS keep their own;
    all other elements, one class "other" as in the histograms, take that of the first of them in ATOM_TYPES."""
    names, class_of_type = histogram_classes(cfg.ATOM_TYPES, cfg.HIST_ELEMENTS)
    first_other = next((s for s in cfg.ATOM_TYPES if s not in cfg.HIST_ELEMENTS), None)
    class_numbers = [ATOMIC_NUMBER[name if name != "other" else first_other] for name in names]
    return np.array(class_numbers)[class_of_type.numpy()]


def make_descriptor(cfg, periodic):
    """The dscribe descriptor of cfg.ATOM_DESCRIPTOR for the species of species_numbers."""
    from dscribe.descriptors import ACSF, SOAP  # imported here: numba compiles on import, for a second or more
    species = sorted(set(species_numbers(cfg).tolist()))
    if cfg.ATOM_DESCRIPTOR == "soap":
        return SOAP(species=species, r_cut=cfg.ATOM_DESCRIPTOR_CUTOFF, n_max=cfg.SOAP_N_MAX, l_max=cfg.SOAP_L_MAX,
                    compression={"mode": SOAP_COMPRESSION}, periodic=periodic, dtype="float32")
    return ACSF(species=species, r_cut=cfg.ATOM_DESCRIPTOR_CUTOFF, g2_params=ACSF_G2, g4_params=ACSF_G4,
                periodic=periodic, dtype="float32")


def atom_target_width(cfg):
    """Columns of the per-atom targets of cfg."""
    return make_descriptor(cfg, periodic=False).get_number_of_features()


def build_atom_descriptors(arrays, cfg):
    """The descriptor of every atom of `arrays` (z, pos, n_atoms, cell for crystals): (A, width) float32."""
    periodic = "cell" in arrays
    descriptor = make_descriptor(cfg, periodic)
    numbers = species_numbers(cfg)[type_index_table(cfg.ATOM_TYPES).numpy()[arrays["z"]]]
    bounds = np.concatenate([[0], np.cumsum(arrays["n_atoms"])])
    values = np.empty((len(arrays["z"]), descriptor.get_number_of_features()), dtype=np.float32)
    for row in tqdm(range(len(arrays["n_atoms"])), desc=f"{cfg.ATOM_DESCRIPTOR} per atom", mininterval=1.0):
        atoms = slice(bounds[row], bounds[row + 1])
        values[atoms] = descriptor.create(Atoms(numbers=numbers[atoms], positions=arrays["pos"][atoms],
                                                cell=arrays["cell"][row] if periodic else None, pbc=periodic))
    return values


def structures_cache_name(prefix, settings, arrays):
    """File name of a per-atom cache: `prefix`, then a hash of `settings` (JSON-able) and of the
    structures (atomic numbers, positions, atom counts, cells), so a subset, other settings or
    another dataset get their own file."""
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    for key in ("z", "pos", "n_atoms", "cell"):
        if key in arrays:
            digest.update(np.ascontiguousarray(arrays[key]).tobytes())
    return f"{prefix}_{digest.hexdigest()[:16]}.npz"


def cache_name(arrays, cfg):
    """File name of the targets of these structures and settings: a hash of both."""
    settings = {"descriptor": cfg.ATOM_DESCRIPTOR, "cutoff": cfg.ATOM_DESCRIPTOR_CUTOFF,
                "soap": [cfg.SOAP_N_MAX, cfg.SOAP_L_MAX, SOAP_COMPRESSION], "acsf": [ACSF_G2, ACSF_G4],
                "species": species_numbers(cfg).tolist()}
    return structures_cache_name(f"atom_targets_{cfg.ATOM_DESCRIPTOR}", settings, arrays)


def cached_atom_values(arrays, cfg, name, what, width, dtype, build):
    """Per-atom values (A, width) of `dtype` for the structures `arrays`: from the cache `name` under
    DATA_ROOT, checked (`what` names it in errors), or made by build() and cached there. A damaged or
    mismatched cache is named, and rebuilt only once it is deleted."""
    shape = (len(arrays["z"]), width)

    def validate(cached, source):
        check_cache_arrays(cached, source, {"values": dtype})
        if cached["values"].shape != shape or not np.isfinite(cached["values"]).all():
            raise InputError(f"{source}: {what} of shape {cached['values'].shape}, expected {shape} "
                             "and finite values")
        return cached

    return cached_arrays(cfg.DATA_ROOT, name, what, validate, lambda: {"values": build()}, "structures")["values"]


def load_atom_descriptors(arrays, cfg):
    """The per-atom descriptors of `arrays`, from the cache under DATA_ROOT or built and cached there."""
    return cached_atom_values(arrays, cfg, cache_name(arrays, cfg), "per-atom target cache", atom_target_width(cfg),
                              np.float32, lambda: build_atom_descriptors(arrays, cfg))


def standardized_atom_values(values, train_atoms, device):
    """Per-atom values (A, width) as float32 on `device`, standardized per column with the statistics
    of the atoms `train_atoms`. A column's std is at least a tenth of the RMS column std, as for the
    structure descriptors."""
    values = torch.as_tensor(values, dtype=torch.float32, device=device)
    return standardize(values, train_atoms, min_std=std_floor(values[train_atoms].std(dim=0)))[0]


def atom_targets(arrays, train_atoms, cfg, device):
    """Standardized per-atom targets (A, width) on `device`, statistics from the atoms `train_atoms`."""
    return standardized_atom_values(load_atom_descriptors(arrays, cfg), train_atoms, device)
