"""Plain reference implementations that bench.py times against the package's fast paths.

These follow the straightforward way of writing each step: one torch_geometric Data object per
molecule collated by the PyG DataLoader, a fully connected tensor product with per-edge weights,
per-molecule descriptor loops, the numpy/sklearn k-center loop and one property head at a time.
Shapes as in models.py: A atoms, E directed edges, B molecules per batch.
"""
import numpy as np
import torch
from e3nn import o3
from e3nn.nn import FullyConnectedNet
from sklearn.metrics import pairwise_distances
from torch import nn
from torch_geometric.data import Data
from torch_geometric.utils import scatter

import descriptors
from graphs import radius_graph
from heads import new_head, train_mlp
from models import EquivGNNEncoder, PointConvolution, gate_for
from training import group_losses, weighted_total

# --- structures as a list of PyG Data objects ----------------------------------------

def molecule_data_list(arrays, targets, cutoff):
    """One Data(z (n,), pos (n, 3), edge_index (2, e), y (1, D)) per molecule of the cache arrays,
    its radius graph built once here; `targets` (M, D) are the descriptor targets of the molecules."""
    counts = arrays["n_atoms"].tolist()
    zs = torch.split(torch.as_tensor(arrays["z"].astype(np.int64)), counts)
    positions = torch.split(torch.as_tensor(arrays["pos"]), counts)
    molecules = []
    for i, (z, pos) in enumerate(zip(zs, positions)):
        edge_index = radius_graph(pos, torch.zeros(len(z), dtype=torch.long), cutoff)
        molecules.append(Data(z=z, pos=pos, edge_index=edge_index, y=targets[i:i + 1]))
    return molecules


# --- encoder with a fully connected tensor product -----------------------------------

class FullTPConvolution(nn.Module):
    """models.PointConvolution with the message written as one FullyConnectedTensorProduct
    straight into the gate input, its (E, weight_numel) weights made per edge by the radial MLP."""

    def __init__(self, irreps_in, irreps_sh, irreps_out, num_basis, radial_hidden_dim, avg_num_neighbors):
        super().__init__()
        self.gate = gate_for(o3.Irreps(irreps_out))
        self.tp = o3.FullyConnectedTensorProduct(irreps_in, irreps_sh, self.gate.irreps_in,
                                                 shared_weights=False, internal_weights=False)
        self.radial = FullyConnectedNet([num_basis, radial_hidden_dim, self.tp.weight_numel],
                                        torch.nn.functional.silu)
        self.self_connection = o3.Linear(irreps_in, self.gate.irreps_in)
        self.neighbor_norm = avg_num_neighbors**-0.5

    def forward(self, h, edge_index, edge_sh, edge_basis):
        source, target = edge_index
        messages = self.tp(h[source], edge_sh, self.radial(edge_basis))
        summed = scatter(messages, target, dim=0, dim_size=h.shape[0], reduce="sum")
        return self.gate(summed * self.neighbor_norm + self.self_connection(h))


class FullTPEncoder(EquivGNNEncoder):
    """EquivGNNEncoder (same embedding, layer irreps, radial basis and readout) whose
    convolutions are FullTPConvolution; takes the same keyword hyperparameters."""

    def __init__(self, **hparams):
        super().__init__(**hparams)
        self.layers = nn.ModuleList(
            FullTPConvolution(layer.irreps_in, self.irreps_sh, layer.irreps_out, hparams["num_radial_basis"],
                              hparams["radial_hidden_dim"], hparams["avg_num_neighbors"])
            for layer in self.layers
        )


class IndexGatherConvolution(PointConvolution):
    """models.PointConvolution with the neighbour features gathered as h[source], whose backward on
    the CPU accumulates with atomic adds in thread-timing order: not bit-for-bit repeatable."""

    def forward(self, h, edge_index, edge_sh, edge_basis):
        source, target = edge_index
        messages = self.tp(h[source], edge_sh, self.radial(edge_basis))
        summed = scatter(messages, target, dim=0, dim_size=h.shape[0], reduce="sum")
        return self.gate(self.linear(summed * self.neighbor_norm) + self.self_connection(h))


def with_index_gather(encoder):
    """`encoder` with every layer switched to IndexGatherConvolution, weights kept."""
    for layer in encoder.layers:
        layer.__class__ = IndexGatherConvolution
    return encoder


def train_epoch_pyg(encoder, decoder, optimizer, loader, cfg, device):
    """training.train_epoch over PyG DataLoader batches; returns the mean weighted loss (0-d tensor)."""
    encoder.train()
    decoder.train()
    sizes = descriptors.descriptor_sizes(cfg)
    total, seen = torch.zeros((), device=device), 0
    for batch in loader:
        batch = batch.to(device)
        prediction = decoder(encoder.encode_graph(batch.z, batch.pos, batch.edge_index, batch.batch))
        loss = weighted_total(group_losses(prediction, batch.y, sizes), cfg.DESCRIPTOR_WEIGHTS)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total += loss.detach() * batch.num_graphs
        seen += batch.num_graphs
    return total / seen


@torch.no_grad()
def latents_pyg(encoder, loader, device):
    """Latents of every molecule in the loader's order, (M, latent_dim) float32 numpy."""
    encoder.eval()
    latents = []
    for batch in loader:
        batch = batch.to(device)
        latents.append(encoder.encode_graph(batch.z, batch.pos, batch.edge_index, batch.batch))
    return torch.cat(latents).float().cpu().numpy()


# --- descriptors, k-center and heads ---------------------------------------------------

def descriptors_per_molecule(structures, cfg):
    """descriptors.compute_descriptors one molecule at a time: (M, total width)."""
    rows = []
    for molecule in range(structures.num_molecules):
        atoms, batch = structures.atoms_of(torch.tensor([molecule], device=structures.z.device))
        groups = descriptors.structure_descriptors(structures.types[atoms], structures.pos[atoms], batch, 1, cfg)
        rows.append(torch.cat(list(groups.values()), dim=1))
    return torch.cat(rows)


def kcenter_sklearn(features, n_samples, first_centre):
    """The classic coreset greedy loop: features (n, d) numpy -> (n_samples,) int64 picks, starting at
    `first_centre`. Picked rows are set to -1 so they never come back, as in kcenter_greedy."""
    min_distances = np.full((len(features), 1), np.inf, dtype=features.dtype)
    selected = np.empty(n_samples, dtype=np.int64)
    centre = first_centre
    for k in range(n_samples):
        selected[k] = centre
        dist = pairwise_distances(features, features[[centre]], metric="euclidean")
        min_distances = np.minimum(min_distances, dist)
        min_distances[centre] = -1.0
        centre = int(np.argmax(min_distances))
    return selected


def train_heads_sequential(x, y, x_val, y_val, seeds, cfg):
    """One train_mlp per head, in turn. Shapes as in train_mlp_heads: x (H, N, d), y (H, N),
    x_val (V, d), y_val (H, V). Returns the trained heads and their best epochs."""
    heads, best_epochs = [], []
    for h, seed in enumerate(seeds):
        model = new_head(seed, x.shape[2], cfg).to(x.device, x.dtype)
        model, best_epoch = train_mlp(model, x[h], y[h], x_val, y_val[h], cfg, seed)
        heads.append(model)
        best_epochs.append(best_epoch)
    return heads, best_epochs
