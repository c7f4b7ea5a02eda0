"""Symmetry, graph construction and the property head."""
import pytest
import torch

from conftest import random_molecules, random_motions, relative_error
from graphs import radius_graph
from models import EquivDecoder, EquivGNNEncoder, ResidualMLP, VectorHead
from utils import InputError

ATOM_TYPES = ("H", "C", "N", "O", "F")


def make_encoder(hidden_irreps="16x0e + 16x1o", num_layers=3, seed=0, **options):
    torch.manual_seed(seed)
    encoder = EquivGNNEncoder(ATOM_TYPES, hidden_irreps, num_layers, latent_dim=32, cutoff=3.0,
                              num_radial_basis=8, radial_hidden_dim=16, avg_num_neighbors=8.0, **options)
    return encoder.to(torch.float64).eval()


@pytest.fixture(scope="module")
def molecules():
    return random_molecules([7, 12, 3, 9], torch.Generator().manual_seed(1))


@pytest.mark.parametrize("hidden_irreps, num_layers, options", [
    ("16x0e + 16x1o", 3, {}), ("8x0e + 4x1o + 4x2e", 3, {}), ("8x0e + 4x0o + 4x1o + 4x1e", 4, {}),
    ("8x0e + 4x0o + 4x1o + 4x1e", 4, {"readout": "all"}), ("16x0e + 16x1o", 3, {"keep_vectors": True}),
    ("8x0e + 4x1o + 4x2e", 2, {"readout": "all", "keep_vectors": True})])
def test_latent_invariant_to_rotation_reflection_translation(molecules, hidden_irreps, num_layers, options):
    z, pos, batch = molecules
    encoder = make_encoder(hidden_irreps, num_layers, **options)
    reference = encoder(z, pos, batch)
    for rotation, shift in random_motions(seed=2):  # an improper rotation: parity-aware irreps must still give invariants
        moved = encoder(z, pos @ rotation.T + shift, batch)
        assert relative_error(moved, reference) < 1e-6


def test_predicted_vectors_rotate_with_the_structure(molecules):
    z, pos, batch = molecules
    encoder = make_encoder("8x0e + 4x0o + 4x1o + 4x1e", 4, keep_vectors=True)
    head = VectorHead(encoder.last_irreps).to(torch.float64)
    reference = head(encoder.encode(z, pos, batch)[1])
    assert reference.shape == (len(z), 3) and reference.norm() > 0
    for rotation, shift in random_motions(seed=4):
        moved = head(encoder.encode(z, pos @ rotation.T + shift, batch)[1])
        assert relative_error(moved, reference @ rotation.T) < 1e-6


def test_readout_of_every_layer_sees_what_the_last_layer_misses(molecules):
    z, pos, batch = molecules
    last, every = make_encoder(), make_encoder(readout="all")
    # two hidden layers of 16 scalars and 16 vector norms, then the last layer's 16 scalars
    assert every.atom_readout.in_features == 32 + 32 + 16 and last.atom_readout.in_features == 16
    assert relative_error(every(z, pos, batch), last(z, pos, batch)) > 0.1


def test_vectors_kept_only_when_asked_and_only_where_there_are_any():
    assert str(make_encoder().last_irreps) == "16x0e"
    assert str(make_encoder(keep_vectors=True).last_irreps) == "16x0e+16x1o"
    with pytest.raises(InputError, match="needs 1o channels"):
        make_encoder("8x0e + 4x2e", keep_vectors=True)
    with pytest.raises(InputError, match="LATENT_READOUT='mean'"):
        make_encoder(readout="mean")


def test_latent_invariant_to_atom_permutation(molecules):
    z, pos, batch = molecules
    encoder = make_encoder()
    reference = encoder(z, pos, batch)
    generator = torch.Generator().manual_seed(3)
    order = torch.cat([torch.nonzero(batch == m)[:, 0][torch.randperm(int((batch == m).sum()), generator=generator)]
                       for m in range(int(batch.max()) + 1)])
    assert relative_error(encoder(z[order], pos[order], batch[order]), reference) < 1e-6


def test_molecule_alone_equals_its_row_in_a_batch(molecules):
    z, pos, batch = molecules
    encoder = make_encoder()
    together = encoder(z, pos, batch)
    for m in range(int(batch.max()) + 1):
        atoms = batch == m
        alone = encoder(z[atoms], pos[atoms], torch.zeros(int(atoms.sum()), dtype=torch.long))
        assert relative_error(alone[0], together[m]) < 1e-10


def test_latent_is_not_trivially_constant(molecules):
    z, pos, batch = molecules
    latent = make_encoder()(z, pos, batch)
    assert latent.std(dim=0).min() > 0  # the invariance tests above would pass for a constant map
    assert torch.linalg.matrix_rank(latent) == len(latent)


def test_radius_graph_matches_brute_force():
    generator = torch.Generator().manual_seed(4)
    for trial in range(5):
        sizes = torch.randint(1, 30, (6,), generator=generator).tolist()
        _, pos, batch = random_molecules(sizes, generator)
        cutoff = 1.5 + trial
        edges = radius_graph(pos, batch, cutoff)
        expected = {(j, i) for i in range(len(pos)) for j in range(len(pos))
                    if i != j and batch[i] == batch[j] and (pos[i] - pos[j]).norm() < cutoff}
        found = list(map(tuple, edges.T.tolist()))
        assert len(found) == len(set(found))
        assert set(found) == expected
        assert all(s != t and batch[s] == batch[t] for s, t in found)


def test_bad_irreps_are_reported_with_the_value():
    with pytest.raises(InputError, match="ENC_HIDDEN_IRREPS='16x0q'"):
        make_encoder("16x0q")
    with pytest.raises(InputError, match="needs 0e"):
        make_encoder("8x1o")
    with pytest.raises(InputError, match="\\[1e\\] never appear with ENC_NUM_LAYERS=3"):
        make_encoder("8x0e + 8x1e")  # 1e needs 1o x 1o, and 1o is not in the hidden irreps
    with pytest.raises(InputError, match="\\[0o\\] never appear with ENC_NUM_LAYERS=3"):
        make_encoder("8x0e + 4x0o + 4x1o + 4x1e")  # 0o needs 1o x 1e, which only a third hidden layer has


def test_one_layer_reaches_no_hidden_irrep_but_the_kept_vectors():
    with pytest.raises(InputError, match=r"'8x0e\+4x1o': \[1o\] never appear with ENC_NUM_LAYERS=1"):
        make_encoder("8x0e+4x1o", num_layers=1)
    assert str(make_encoder("8x0e+4x1o", num_layers=1, keep_vectors=True).last_irreps) == "8x0e+4x1o"
    assert str(make_encoder("8x0e", num_layers=1).last_irreps) == "8x0e"


def test_odd_parity_irreps_appear_layer_by_layer():
    encoder = make_encoder("8x0e + 4x0o + 4x1o + 4x1e", num_layers=4)
    assert [str(layer.irreps_out) for layer in encoder.layers] == [
        "8x0e+4x1o", "8x0e+4x1o+4x1e", "8x0e+4x0o+4x1o+4x1e", "8x0e"]


def test_unknown_atom_type_symbol():
    with pytest.raises(InputError, match="Xx"):
        EquivGNNEncoder(("H", "Xx"), "4x0e", 1, 8, 3.0, 4, 8, 4.0)


def test_decoder_maps_a_latent_to_every_descriptor():
    decoder = EquivDecoder(latent_dim=32, hidden_dim=16, out_dim=7)
    assert decoder(torch.randn(5, 32)).shape == (5, 7)


def test_residual_mlp_fits_a_smooth_function():
    torch.manual_seed(0)
    x = torch.randn(512, 4)
    y = torch.sin(x[:, 0]) + 0.5 * x[:, 1] * x[:, 2]
    model = ResidualMLP(latent_dim=4, hidden_dim=64, num_layers=3)
    assert model(x).shape == (512,)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(600):
        loss = ((model(x) - y) ** 2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert float(loss.detach()) < 0.02 * float(y.var())
