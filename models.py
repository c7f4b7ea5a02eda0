"""The structure encoder, its self-supervised decoder heads and the property head.

Shapes: a batch of B structures with A atoms in all is z (A,) atomic numbers, pos (A, 3) in
Angstrom, batch (A,) structure of each atom, sorted, and for periodic structures cell (B, 3, 3), one
lattice vector a row (None for molecules); E is the number of directed edges. The edges come from
graphs.py.
"""
import math

import torch
from e3nn import o3
from e3nn.nn import FullyConnectedNet, Gate
from torch import nn
from torch_geometric.utils import scatter

from graphs import edge_vectors, neighbour_graph, type_index_table
from utils import InputError

POLY_CUTOFF_P = 6  # smoothness of the radial cutoff envelope (NequIP's default): C^2 at the cutoff


class RadialBasis(nn.Module):
    """Bessel functions sin(n pi r / rc) / r times a smooth polynomial envelope that vanishes at rc."""

    def __init__(self, cutoff, num_basis):
        super().__init__()
        self.cutoff = cutoff
        self.register_buffer("frequencies", torch.arange(1, num_basis + 1) * math.pi / cutoff)

    def forward(self, length):  # (E,) -> (E, num_basis)
        p = POLY_CUTOFF_P
        x = length / self.cutoff
        envelope = (1 - (p + 1) * (p + 2) / 2 * x**p + p * (p + 2) * x ** (p + 1)
                    - p * (p + 1) / 2 * x ** (p + 2)) * (x < 1)
        bessel = math.sqrt(2 / self.cutoff) * torch.sin(self.frequencies * length[:, None]) / length[:, None]
        return bessel * envelope[:, None]


def gate_for(irreps_out):
    """An e3nn Gate whose output is `irreps_out`: scalars pass through SiLU (tanh if odd), every
    l > 0 irrep is scaled by a sigmoid of its own extra 0e scalar."""
    scalars = o3.Irreps([(mul, ir) for mul, ir in irreps_out if ir.l == 0])
    gated = o3.Irreps([(mul, ir) for mul, ir in irreps_out if ir.l > 0])
    activations = [torch.nn.functional.silu if ir.p == 1 else torch.tanh for _, ir in scalars]
    gates = o3.Irreps(f"{gated.num_irreps}x0e") if gated else o3.Irreps("")
    return Gate(scalars, activations, gates, [torch.sigmoid] * len(gates), gated)


def reachable(irreps_in, irreps_sh, target):
    """The part of `target` that a tensor product of irreps_in with irreps_sh can produce."""
    made = {ir_out for _, ir_in in irreps_in for _, ir_sh in irreps_sh for ir_out in ir_in * ir_sh}
    return o3.Irreps([(mul, ir) for mul, ir in target if ir in made])


class PointConvolution(nn.Module):
    """One interaction: h_i <- Gate(Linear(sum_j TP(h_j, Y(r_ij); w(|r_ij|)) / sqrt(n_avg)) + Linear(h_i)).

    The tensor product is channel-wise ("uvu"): each channel of h_j meets the edge harmonics
    Y(r_ij) with its own weight per path, computed per edge by an MLP of the radial basis."""

    def __init__(self, irreps_in, irreps_sh, irreps_out, num_basis, radial_hidden_dim, avg_num_neighbors):
        super().__init__()
        self.irreps_in, self.irreps_out = o3.Irreps(irreps_in), o3.Irreps(irreps_out)
        self.gate = gate_for(self.irreps_out)
        wanted = {ir for _, ir in self.gate.irreps_in}
        paths, instructions = [], []
        for i, (mul, ir_in) in enumerate(self.irreps_in):
            for j, (_, ir_sh) in enumerate(irreps_sh):
                for ir_out in ir_in * ir_sh:
                    if ir_out in wanted:
                        instructions.append((i, j, len(paths), "uvu", True))
                        paths.append((mul, ir_out))
        unreachable = wanted - {ir for _, ir in paths}
        if unreachable:
            raise InputError(f"irreps {self.irreps_out} cannot be reached from {self.irreps_in} x {irreps_sh}: "
                             f"no path to {sorted(unreachable)}")
        self.tp = o3.TensorProduct(self.irreps_in, irreps_sh, o3.Irreps(paths), instructions,
                                   shared_weights=False, internal_weights=False)
        self.radial = FullyConnectedNet([num_basis, radial_hidden_dim, self.tp.weight_numel],
                                        torch.nn.functional.silu)
        self.linear = o3.Linear(self.tp.irreps_out, self.gate.irreps_in)
        self.self_connection = o3.Linear(self.irreps_in, self.gate.irreps_in)
        self.neighbor_norm = avg_num_neighbors**-0.5  # keeps the sum over neighbours at unit scale

    def forward(self, h, edge_index, edge_sh, edge_basis):
        source, target = edge_index
        # index_select, not h[source]: on the CPU the backward of h[source] accumulates with atomic adds
        # whose order, and so float rounding, changes from run to run; index_select's backward does not
        messages = self.tp(h.index_select(0, source), edge_sh, self.radial(edge_basis))
        summed = scatter(messages, target, dim=0, dim_size=h.shape[0], reduce="sum")
        return self.gate(self.linear(summed * self.neighbor_norm) + self.self_connection(h))


class EquivGNNEncoder(nn.Module):
    """Structure -> latent (num_graphs, latent_dim), invariant to rotations, reflections,
    translations and atom order.

    Atom types embed as 0e scalars. `num_layers` point convolutions follow: each hidden layer
    carries the part of `hidden_irreps` it can reach (odd parities appear a layer or two in), the
    last only the 0e scalars, and also the 1o vectors if `keep_vectors` (for a vector head). The
    readout takes per atom the last layer's scalars (readout="last") or the invariants of every
    layer, scalars and the norm of each other channel (readout="all"). It maps them to latent_dim
    features through a SiLU, so the pooled latent is not confined to a hidden-size subspace; they
    are summed per structure (pooling="sum"), averaged (pooling="mean"), or reduced to their mean,
    standard deviation and max (pooling="moments"), and mixed by a final linear layer to latent_dim.
    A periodic cell is one arbitrary choice of repeat unit, so periodic structures average (or take
    moments): a supercell then has the latent of its unit cell, as its atoms have the same features.
    With `mask_token`, atomic number 0 embeds as one more type: a masked atom."""

    def __init__(self, atom_types, hidden_irreps, num_layers, latent_dim, cutoff, num_radial_basis,
                 radial_hidden_dim, avg_num_neighbors, readout="last", keep_vectors=False, pooling="sum",
                 mask_token=False):
        super().__init__()
        try:
            hidden = o3.Irreps(hidden_irreps).simplify()
        except (ValueError, AssertionError) as err:
            raise InputError(f"ENC_HIDDEN_IRREPS={hidden_irreps!r}: not an irreps string ({err})") from None
        scalars = o3.Irreps([(mul, ir) for mul, ir in hidden if ir == o3.Irrep("0e")])
        if not scalars:
            raise InputError(f"ENC_HIDDEN_IRREPS={hidden_irreps!r}: needs 0e channels to pool into the latent")
        if num_layers < 1:
            raise InputError(f"ENC_NUM_LAYERS={num_layers}: expected at least 1")
        if readout not in READOUTS:
            raise InputError(f"LATENT_READOUT={readout!r}: expected one of {READOUTS}")
        vectors = o3.Irreps([(mul, ir) for mul, ir in hidden if ir == o3.Irrep("1o")])
        if keep_vectors and not vectors:
            raise InputError(f"ENC_HIDDEN_IRREPS={hidden_irreps!r}: the denoising head needs 1o channels")
        if pooling not in POOLINGS:
            raise InputError(f"LATENT_POOLING={pooling!r}: expected one of {POOLINGS}")
        self.cutoff, self.readout, self.pooling = cutoff, readout, pooling
        self.irreps_sh = o3.Irreps.spherical_harmonics(hidden.lmax)
        type_index = type_index_table(atom_types)  # atomic number -> embedding row
        if mask_token:
            type_index[MASK_Z] = len(atom_types)
        self.register_buffer("type_index", type_index)
        self.embedding = nn.Embedding(len(atom_types) + mask_token, scalars.dim)
        self.radial_basis = RadialBasis(cutoff, num_radial_basis)
        layer_irreps = [scalars]  # each hidden layer carries what it can reach of `hidden`, as NequIP does
        for _ in range(num_layers - 1):
            layer_irreps.append(reachable(layer_irreps[-1], self.irreps_sh, hidden))
        layer_irreps.append(reachable(layer_irreps[-1], self.irreps_sh, scalars + vectors) if keep_vectors
                            else scalars)
        never = sorted({ir for _, ir in hidden} - {ir for irreps in layer_irreps for _, ir in irreps})
        if never:  # a single layer maps the embeddings to the last layer's irreps, and carries no hidden ones
            raise InputError(f"ENC_HIDDEN_IRREPS={hidden_irreps!r}: {never} never appear with ENC_NUM_LAYERS="
                             f"{num_layers} (from 0e embeddings and harmonics {self.irreps_sh}); add layers")
        self.layers = nn.ModuleList(
            PointConvolution(irreps_in, self.irreps_sh, irreps_out, num_radial_basis, radial_hidden_dim,
                             avg_num_neighbors)
            for irreps_in, irreps_out in zip(layer_irreps[:-1], layer_irreps[1:])
        )
        self.num_scalars = scalars.dim
        readout_dim = scalars.dim if readout == "last" else sum(
            invariant_count(layer.gate.irreps_out) for layer in self.layers)
        self.atom_readout = nn.Linear(readout_dim, latent_dim)
        self.latent_out = nn.Linear(latent_dim * (3 if pooling == "moments" else 1), latent_dim)

    @property
    def last_irreps(self):
        """Irreps of the last layer's node features: its 0e scalars, then any kept 1o vectors."""
        return self.layers[-1].gate.irreps_out

    def forward(self, z, pos, batch, cell=None):
        return self.encode(z, pos, batch, cell)[0]

    def encode(self, z, pos, batch, cell=None):
        """(latent (B, latent_dim), the last layer's node features (A, last_irreps.dim), the per-atom
        readout features that are pooled (A, latent_dim))."""
        edge_index, offset = neighbour_graph(pos, batch, self.cutoff, cell)
        features = self.node_features(z, pos, edge_index, offset)
        atom_features = self.atom_features(features)
        return self.pool(atom_features, batch), features[-1], atom_features

    def encode_graph(self, z, pos, edge_index, batch, offset=None):
        """The latent from a graph built elsewhere: edge_index (2, E) as (source, target)."""
        return self.pool(self.atom_features(self.node_features(z, pos, edge_index, offset)), batch)

    def node_features(self, z, pos, edge_index, offset=None):
        """The node features after each interaction layer, a list of (A, irreps dim) tensors."""
        edge_vec = edge_vectors(pos, edge_index, offset)
        edge_sh = o3.spherical_harmonics(self.irreps_sh, edge_vec, normalize=True, normalization="component")
        edge_basis = self.radial_basis(edge_vec.norm(dim=1))
        h = self.embedding(self.type_index[z])
        features = []
        for layer in self.layers:
            h = layer(h, edge_index, edge_sh, edge_basis)
            features.append(h)
        return features

    def atom_features(self, features):
        """Node features of every layer -> the invariant readout features of each atom (A, latent_dim)."""
        if self.readout == "last":
            invariants = features[-1][:, :self.num_scalars]  # a gate's output starts with its scalars
        else:
            invariants = torch.cat([channel_invariants(h, layer.gate.irreps_out)
                                    for h, layer in zip(features, self.layers)], dim=1)
        return torch.nn.functional.silu(self.atom_readout(invariants))

    def pool(self, atom_features, batch):
        """Readout features of the atoms (A, latent_dim) -> the latent of each structure (B, latent_dim)."""
        if self.pooling == "moments":
            return self.latent_out(moments(atom_features, batch))
        return self.latent_out(scatter(atom_features, batch, dim=0, reduce=self.pooling))


READOUTS = ("last", "all")
POOLINGS = ("sum", "mean", "moments")
MASK_Z = 0  # the atomic number that stands for a masked atom; no element has it
MOMENTS_EPS = 1e-6  # inside the square root of a variance: a column equal on every atom keeps a finite gradient


def moments(x, batch):
    """Mean, standard deviation and max over each structure's atoms of every column: (A, d) -> (B, 3 d).
    The variance divides by the atom count, so a supercell has the moments of its unit cell."""
    mean = scatter(x, batch, dim=0, reduce="mean")
    variance = scatter((x - mean.index_select(0, batch)) ** 2, batch, dim=0, reduce="mean")
    return torch.cat([mean, (variance + MOMENTS_EPS).sqrt(), scatter(x, batch, dim=0, reduce="max")], dim=1)


def invariant_count(irreps):
    """Number of invariants channel_invariants takes from features of `irreps`: one per channel."""
    return sum(mul for mul, _ in irreps)


def channel_invariants(h, irreps):
    """(A, irreps.dim) -> (A, channels): each 0e channel as it is, the norm of every other channel
    (for a 0o pseudoscalar its absolute value), all unchanged by rotations and reflections."""
    parts = []
    for (mul, ir), block in zip(irreps, h.split([mul * ir.dim for mul, ir in irreps], dim=1)):
        parts.append(block if ir == o3.Irrep("0e") else block.reshape(-1, mul, ir.dim).norm(dim=2))
    return torch.cat(parts, dim=1)


class VectorHead(nn.Module):
    """Node features -> one 1o vector per atom (A, 3), x y z: an equivariant linear map, so the
    vectors rotate with the structure."""

    def __init__(self, irreps_in):
        super().__init__()
        self.linear = o3.Linear(irreps_in, "1x1o")

    def forward(self, h):
        return self.linear(h)


class AtomHead(nn.Module):
    """Per-atom invariant features (A, in_dim) -> per-atom predictions (A, out_dim): a one-hidden-layer MLP."""

    def __init__(self, in_dim, hidden_dim, out_dim):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.SiLU(), nn.Linear(hidden_dim, out_dim))

    def forward(self, atom_features):
        return self.net(atom_features)


class EquivDecoder(nn.Module):
    """Latent (B, latent_dim) -> structure descriptors (B, out_dim): an MLP on invariants, so invariant."""

    def __init__(self, latent_dim, hidden_dim, out_dim):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(latent_dim, hidden_dim), nn.SiLU(),
            nn.Linear(hidden_dim, hidden_dim), nn.SiLU(),
            nn.Linear(hidden_dim, out_dim),
        )

    def forward(self, latent):
        return self.net(latent)


class ResidualMLP(nn.Module):
    """Latent (batch, latent_dim) -> one property (batch,): in_proj, residual Linear+ReLU blocks, out_proj."""

    def __init__(self, latent_dim, hidden_dim, num_layers):
        super().__init__()
        self.in_proj = nn.Linear(latent_dim, hidden_dim)
        self.blocks = nn.ModuleList(nn.Linear(hidden_dim, hidden_dim) for _ in range(num_layers))
        self.out_proj = nn.Linear(hidden_dim, 1)

    def forward(self, x):
        h = torch.relu(self.in_proj(x))
        for block in self.blocks:
            h = h + torch.relu(block(h))
        return self.out_proj(h).squeeze(-1)
