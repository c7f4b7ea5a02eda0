"""Frozen embeddings of pretrained interatomic potentials, a reference latent source: SevenNet
(sevenn, e3nn-based) and CHGNet (chgnet). Both ship their weights inside their wheels, so they work
offline, and both were trained on DFT energies and forces of inorganic crystals (MPtrj), never on
molecules' HOMO energies.

An embedder maps a batch of structures (z (A,), pos (A, 3) Angstrom, batch (A,)) to
(embedding (B, D) float32, energy (B,) eV): the invariant node features after every interaction
block (readout "all", concatenated) or after the last one ("last"), averaged over each structure's
atoms, and the model's own total energy from the same forward pass.
"""
import importlib.metadata
import importlib.util
from pathlib import Path

import numpy as np
import torch
from torch_geometric.utils import scatter

from models import radius_graph
from utils import InputError

READOUTS = ("all", "last")
INSTALL_HINT = "pip install -r requirements-pretrained.txt"


def require(package):
    """Fail with one line naming what to install when an optional package is missing."""
    if importlib.util.find_spec(package) is None:
        raise InputError(f"package {package} is not installed (an optional dependency): {INSTALL_HINT}")


def mean_over_atoms(features, batch, num_structures):
    return scatter(features, batch, dim=0, dim_size=num_structures, reduce="mean")


def check_elements(z, covered, model_name):
    """Every atomic number of `z` must be one the model was trained on."""
    missing = sorted(set(np.unique(np.asarray(z)).tolist()) - set(covered))
    if missing:
        raise InputError(f"{model_name} does not cover atomic number(s) {missing}; it knows {len(covered)} "
                         f"elements ({min(covered)}..{max(covered)}, with gaps)")


class SevenNetEmbedder:
    """SevenNet from the checkpoint inside the sevenn wheel, run batched on bulk radius graphs.

    The model carries no parity (its irreps are all "e"), so it is invariant under rotations but
    not exactly under reflections: a mirror image changes the embedding slightly (tested)."""

    package = "sevenn"

    def __init__(self, checkpoint_name, readout, device):
        require(self.package)
        import sevenn
        import sevenn._keys as keys
        import sevenn.util
        self.keys = keys
        path = Path(sevenn.util.pretrained_name_to_path(checkpoint_name))
        self.checkpoint = path.relative_to(Path(sevenn.__file__).parent.parent)  # inside the wheel, no venv path
        self.model = sevenn.util.load_checkpoint(str(path)).build_model().to(device).eval()
        self.model.set_is_batch_data(True)
        self.cutoff = float(self.model.cutoff)
        self.elements = sorted(self.model.type_map)
        gates = [name for name in self.model._modules if name.endswith("_equivariant_gate")]
        self.readout_blocks = gates if readout == "all" else gates[-1:]
        # The gate puts the scalars first: (mul, (l, parity)) entries with l = 0
        self.scalar_dims = {name: sum(mul for mul, irrep in self.model._modules[name].gate.irreps_out if irrep.l == 0)
                            for name in self.readout_blocks}
        self.dim = sum(self.scalar_dims.values())

    def graph(self, z, pos, batch):
        """The model's input dict for molecules: every pair of one molecule within the cutoff."""
        keys = self.keys
        edges = radius_graph(pos, batch, self.cutoff)
        return {keys.ATOMIC_NUMBERS: z, keys.NODE_FEATURE: z, keys.POS: pos, keys.EDGE_IDX: edges,
                keys.EDGE_VEC: pos[edges[1]] - pos[edges[0]], keys.BATCH: batch}

    @torch.no_grad()
    def __call__(self, z, pos, batch, num_structures):
        keys = self.keys
        graph = self.model._preprocess(self.graph(z, pos, batch))
        per_block = []
        for name, module in self.model._modules.items():
            if name == "force_output":  # forces need gradients; the energy is complete before this
                break
            graph = module(graph)
            if name in self.scalar_dims:
                per_block.append(graph[keys.NODE_FEATURE][:, :self.scalar_dims[name]])
        embedding = mean_over_atoms(torch.cat(per_block, dim=1), batch, num_structures)
        return embedding.float(), graph[keys.PRED_TOTAL_ENERGY].double()


MODELS = {  # setting value -> (embedder class, the model's own name of its checkpoint)
    "sevennet-0": (SevenNetEmbedder, "7net-0"),
    "sevennet-l3i5": (SevenNetEmbedder, "7net-l3i5"),
}


def check_model_settings(model_name, readout):
    if model_name not in MODELS:
        raise InputError(f"PRETRAINED_MODEL={model_name!r}: unknown model; expected one of {sorted(MODELS)}")
    if readout not in READOUTS:
        raise InputError(f"PRETRAINED_READOUT={readout!r}: expected one of {list(READOUTS)}")


def load_embedder(model_name, readout, device):
    check_model_settings(model_name, readout)
    embedder_class, checkpoint_name = MODELS[model_name]
    return embedder_class(checkpoint_name, readout, device)


def describe(embedder, model_name, readout):
    """What made the latents, for the npz config and the log."""
    return {"model": model_name, "package": embedder.package,
            "package_version": importlib.metadata.version(embedder.package),
            "checkpoint": str(embedder.checkpoint), "readout": readout, "dim": embedder.dim,
            "embedding": ("mean over atoms of the invariant node features after "
                          + ("every interaction block, concatenated" if readout == "all" else "the last block"))}
