"""Frozen embeddings of pretrained interatomic potentials, a reference latent source: SevenNet
(sevenn, e3nn-based) and CHGNet (chgnet). Both ship their weights inside their wheels, so they work
offline, and both were trained on DFT energies and forces of inorganic crystals (MPtrj), never on
molecules' HOMO energies.

An embedder maps a batch of structures (z (A,), pos (A, 3) Angstrom, batch (A,), and for periodic
structures cell (B, 3, 3), one lattice vector a row) to (embedding (B, D) float32, energy (B,) eV):
the invariant node features after every interaction block (readout "all", concatenated) or after the
last one ("last"), averaged over each structure's atoms, and the model's own total energy from the
same forward pass. Averaging over atoms makes a crystal's embedding that of any of its supercells.
Its `atom_features` gives the same pass before the average: (features (A, D), energy (B,) eV), the
per-atom targets of a distilled student (teacher_targets.py).
"""
import importlib.metadata
import importlib.util
from pathlib import Path

import torch
from torch_geometric.utils import scatter

from graphs import edge_vectors, neighbour_graph
from utils import InputError

READOUTS = ("all", "last")
INSTALL_HINT = "pip install -r requirements-pretrained.txt"


def require(package):
    """Fail with one line naming what to install when an optional package is missing."""
    if importlib.util.find_spec(package) is None:
        raise InputError(f"package {package} is not installed (an optional dependency): {INSTALL_HINT}")


def mean_over_atoms(features, batch, num_structures):
    return scatter(features, batch, dim=0, dim_size=num_structures, reduce="mean")


def trained_elements(model_name, numbers):
    """How an error names a model's elements: 'chgnet (trained on 94 elements, atomic numbers 1..94)',
    runs of consecutive atomic numbers joined."""
    runs = []
    for number in sorted(numbers):
        if runs and number == runs[-1][1] + 1:
            runs[-1][1] = number
        else:
            runs.append([number, number])
    spans = ", ".join(f"{first}..{last}" if last > first else str(first) for first, last in runs)
    return f"{model_name} (trained on {len(numbers)} elements, atomic numbers {spans})"


class SevenNetEmbedder:
    """SevenNet from the checkpoint inside the sevenn wheel, run batched on bulk radius graphs.

    The model carries no parity (its irreps are all "e"), so it is invariant under rotations but
    not exactly under reflections: a mirror image changes the embedding slightly (tested)."""

    package = "sevenn"
    reflection_invariant = False

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

    def graph(self, z, pos, batch, cell=None):
        """The model's input dict: every pair within the cutoff, of one molecule or, in a periodic
        structure, under its lattice translations. SevenNet's edge vector points from an edge's
        source (the model's src) to its target (dst), the reverse of graphs.edge_vectors."""
        keys = self.keys
        edges, offset = neighbour_graph(pos, batch, self.cutoff, cell)
        return {keys.ATOMIC_NUMBERS: z, keys.NODE_FEATURE: z, keys.POS: pos, keys.EDGE_IDX: edges,
                keys.EDGE_VEC: -edge_vectors(pos, edges, offset), keys.BATCH: batch}

    def __call__(self, z, pos, batch, num_structures, cell=None):
        return self.embed_graph(self.graph(z, pos, batch, cell), batch, num_structures)

    def atom_features(self, z, pos, batch, num_structures, cell=None):
        return self.graph_atom_features(self.graph(z, pos, batch, cell))

    def embed_graph(self, graph, batch, num_structures):
        """Embedding and energy of a model input dict, however its edges were found."""
        features, energy = self.graph_atom_features(graph)
        return mean_over_atoms(features, batch, num_structures).float(), energy

    @torch.no_grad()
    def graph_atom_features(self, graph):
        """Per-atom features (A, dim) and energy (B,) of a model input dict."""
        keys = self.keys
        graph = self.model._preprocess(graph)
        per_block = []
        for name, module in self.model._modules.items():
            if name == "force_output":  # forces need gradients; the energy is complete before this
                break
            graph = module(graph)
            if name in self.scalar_dims:
                per_block.append(graph[keys.NODE_FEATURE][:, :self.scalar_dims[name]])
        return torch.cat(per_block, dim=1), graph[keys.PRED_TOTAL_ENERGY].double()


class CHGNetEmbedder:
    """CHGNet from the weights inside the chgnet wheel. CHGNet sees only distances and angles, so it
    is invariant under every rotation and reflection. It takes periodic pymatgen structures: a
    crystal keeps its own cell, and a molecule sits alone in a cubic box wide enough that no atom
    sees an image of another within the cutoff, so the box changes nothing (tested)."""

    package = "chgnet"
    reflection_invariant = True
    box_margin = 1.0  # Angstrom beyond the cutoff between a molecule and its nearest image

    def __init__(self, checkpoint_name, readout, device):
        require(self.package)
        from chgnet.model import CHGNet
        self.model = CHGNet.load(model_name=checkpoint_name, use_device=str(device), verbose=False).eval()
        self.checkpoint = f"CHGNet {checkpoint_name} (chgnet/pretrained inside the wheel)"
        self.cutoff = float(self.model.graph_converter.atom_graph_cutoff)
        self.elements = list(range(1, self.model.atom_embedding.embedding.num_embeddings + 1))
        layers = list(self.model.atom_conv_layers)
        self.readout_layers = layers if readout == "all" else layers[-1:]
        # every atom convolution keeps the embedding's width
        self.dim = len(self.readout_layers) * self.model.atom_embedding.embedding.embedding_dim

    def boxed(self, z, pos):
        """One molecule as a pymatgen Structure alone in its box."""
        from pymatgen.core import Lattice, Structure
        span = float((pos.max(0).values - pos.min(0).values).max())
        side = span + self.cutoff + self.box_margin
        return Structure(Lattice.cubic(side), z.tolist(), (pos - pos.min(0).values).numpy(),
                         coords_are_cartesian=True)

    @staticmethod
    def periodic(z, pos, cell):
        """One crystal as a pymatgen Structure with its own lattice."""
        from pymatgen.core import Lattice, Structure
        return Structure(Lattice(cell.numpy()), z.tolist(), pos.numpy(), coords_are_cartesian=True)

    def __call__(self, z, pos, batch, num_structures, cell=None):
        features, energy = self.atom_features(z, pos, batch, num_structures, cell)
        return mean_over_atoms(features, batch.to(features.device), num_structures).float(), energy

    @torch.no_grad()
    def atom_features(self, z, pos, batch, num_structures, cell=None):
        """Per-atom features (A, dim) on the model's device, and energy (B,)."""
        z, pos, batch = z.cpu(), pos.double().cpu(), batch.cpu()
        counts = torch.bincount(batch, minlength=num_structures).tolist()
        atoms = zip(torch.split(z, counts), torch.split(pos, counts))
        structures = ([self.boxed(*each) for each in atoms] if cell is None else
                      [self.periodic(*each, lattice) for each, lattice in zip(atoms, cell.double().cpu())])
        graphs = [self.model.graph_converter(structure) for structure in structures]
        per_layer = []
        hooks = [layer.register_forward_hook(lambda module, args, output: per_layer.append(output))
                 for layer in self.readout_layers]
        try:
            energy_per_atom = self.model(graphs, task="e")["e"]
        finally:
            for hook in hooks:
                hook.remove()
        features = torch.cat(per_layer, dim=1)  # on the model's device
        atoms = torch.as_tensor(counts, dtype=torch.float64, device=features.device)
        return features, energy_per_atom.double() * atoms


class MirrorAveraged:
    """An embedder made exactly invariant under reflections: the mean of its embeddings (and
    energies) of each structure and of its mirror image, at twice the cost."""

    def __init__(self, embedder):
        self.embedder = embedder

    def __getattr__(self, name):  # cutoff, elements, dim, package, checkpoint: the wrapped model's
        return getattr(self.embedder, name)

    def __call__(self, z, pos, batch, num_structures, cell=None):
        embedding, energy = self.embedder(z, pos, batch, num_structures, cell)
        mirrored, mirrored_energy = self.embedder(z, -pos, batch, num_structures, None if cell is None else -cell)
        return (embedding + mirrored) / 2, (energy + mirrored_energy) / 2

    def atom_features(self, z, pos, batch, num_structures, cell=None):
        features, energy = self.embedder.atom_features(z, pos, batch, num_structures, cell)
        mirrored, mirrored_energy = self.embedder.atom_features(z, -pos, batch, num_structures,
                                                                None if cell is None else -cell)
        return (features + mirrored) / 2, (energy + mirrored_energy) / 2


MODELS = {  # setting value -> (embedder class, the model's own name of its checkpoint)
    "sevennet-0": (SevenNetEmbedder, "7net-0"),
    "sevennet-l3i5": (SevenNetEmbedder, "7net-l3i5"),
    "chgnet": (CHGNetEmbedder, "0.3.0"),
}


def check_model_settings(model_name, readout, setting="PRETRAINED_MODEL"):
    """A known model, named by the setting `setting` in the error, and a known readout."""
    if model_name not in MODELS:
        raise InputError(f"{setting}={model_name!r}: unknown model; expected one of {sorted(MODELS)}")
    if readout not in READOUTS:
        raise InputError(f"PRETRAINED_READOUT={readout!r}: expected one of {list(READOUTS)}")


def load_embedder(model_name, readout, device, mirror_average=False):
    """The embedder of a model; with `mirror_average`, a model not invariant under reflections is
    averaged over each structure and its mirror image."""
    check_model_settings(model_name, readout)
    embedder_class, checkpoint_name = MODELS[model_name]
    embedder = embedder_class(checkpoint_name, readout, device)
    return MirrorAveraged(embedder) if mirror_average and not embedder.reflection_invariant else embedder


def describe(embedder, model_name, readout):
    """What made the latents, for the npz config and the log."""
    mirror = " and of its mirror image, averaged" if isinstance(embedder, MirrorAveraged) else ""
    return {"model": model_name, "package": embedder.package,
            "package_version": importlib.metadata.version(embedder.package),
            "checkpoint": str(embedder.checkpoint), "readout": readout, "dim": embedder.dim,
            "embedding": ("mean over atoms of the invariant node features after "
                          + ("every interaction block, concatenated" if readout == "all" else "the last block")
                          + mirror)}
