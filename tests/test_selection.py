"""Selection strategies, checked by hand on a tiny 2-D pool and against brute force."""
import itertools

import numpy as np
import pytest
import torch
from sklearn.cluster import KMeans

import selection
from cli import resolve_config
from utils import InputError

STRATEGIES = list(selection.NESTED)
OUTLIERS = [60, 61, 62]


def two_clusters_and_outliers():
    """Rows 0-29: a dense cluster at (0, 0); rows 30-59: one at (6, 0); rows 60-62: lone outliers."""
    generator = torch.Generator().manual_seed(0)
    left = 0.4 * torch.randn(30, 2, generator=generator, dtype=torch.float64)
    right = 0.4 * torch.randn(30, 2, generator=generator, dtype=torch.float64) + torch.tensor([6.0, 0.0])
    outliers = torch.tensor([[3.0, 7.0], [-5.0, -6.0], [11.0, -6.0]], dtype=torch.float64)
    return torch.cat([left, right, outliers])


def cluster_of(rows):
    return ["left" if r < 30 else "right" if r < 60 else "outlier" for r in rows]


@pytest.fixture(scope="module")
def pool():
    return two_clusters_and_outliers()


@pytest.fixture(scope="module")
def selector(pool):
    return selection.Selector(pool, resolve_config())


# --- every strategy ---------------------------------------------------------------------

@pytest.mark.parametrize("strategy", STRATEGIES)
def test_picks_are_distinct_seeded_and_honour_the_warm_start(strategy, pool):
    cfg = resolve_config({"HERDING_SAMPLE": 40})  # a sample smaller than the pool: the seed matters to herding
    picks = selection.Selector(pool, cfg)(strategy, 20, seed=3, already_selected=[0, 31, 60])
    assert len(picks) == 20 and len(set(picks.tolist())) == 20
    assert not {0, 31, 60} & set(picks.tolist())
    again = selection.Selector(pool, cfg)(strategy, 20, seed=3, already_selected=[0, 31, 60])
    assert again.tolist() == picks.tolist()
    everything = selection.Selector(pool, cfg)(strategy, 60, seed=3, already_selected=[0, 31, 60])
    assert sorted(everything.tolist()) == sorted(set(range(63)) - {0, 31, 60})  # up to the whole pool
    with pytest.raises(InputError, match="cannot pick 61 from 63 rows with 3 already selected"):
        selection.Selector(pool, cfg)(strategy, 61, seed=3, already_selected=[0, 31, 60])


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_other_seeds_give_other_picks_and_nested_strategies_nest(strategy):
    z = torch.randn(300, 6, generator=torch.Generator().manual_seed(0))
    select = selection.Selector(z, resolve_config({"HERDING_SAMPLE": 100, "GP_SCORE": "variance"}))
    long, short = select(strategy, 40, seed=3), select(strategy, 15, seed=3)
    assert select(strategy, 15, seed=4).tolist() != short.tolist()
    assert (short.tolist() == long[:15].tolist()) == selection.NESTED[strategy]


# --- k-center greedy ----------------------------------------------------------------------

def brute_force_kcenter(z, k, first):
    """The textbook greedy on a full distance matrix."""
    dist = np.linalg.norm(z[:, None] - z[None], axis=-1)
    picks = [first]
    while len(picks) < k:
        picks.append(int(np.argmax(dist[:, picks].min(axis=1))))
    return picks


def covering_radius(z, centres):
    return np.linalg.norm(z[:, None] - z[None, centres], axis=-1).min(axis=1).max()


def test_kcenter_matches_brute_force_and_draws_the_first_centre_from_the_seed():
    for seed in range(5):
        z = torch.randn(200, 8, generator=torch.Generator().manual_seed(100 + seed), dtype=torch.float64)
        picks = selection.kcenter_greedy(z, 25, seed)
        first = int(torch.randint(200, (), generator=torch.Generator().manual_seed(seed)))
        assert picks.tolist() == brute_force_kcenter(z.numpy(), 25, first)
    firsts = {int(selection.kcenter_greedy(z, 1, seed)[0]) for seed in range(20)}
    assert len(firsts) > 10  # the first centre is not always row 0


def test_kcenter_covering_radius_is_within_twice_the_optimum():
    for trial in range(4):
        z = np.random.default_rng(trial).normal(size=(11, 2))
        for k in (2, 3, 4):
            optimum = min(covering_radius(z, list(c)) for c in itertools.combinations(range(11), k))
            greedy = covering_radius(z, selection.kcenter_greedy(torch.tensor(z), k, seed=trial).tolist())
            assert optimum <= greedy <= 2 * optimum + 1e-12


def test_kcenter_worked_example_with_a_warm_start():
    z = torch.tensor([[0.0], [1.0], [5.0], [9.0], [10.0], [0.0]])
    # from the labelled row 0 (and its duplicate, row 5): 10 is farthest, then 5, then the tie 1 vs 9 goes to row 1
    assert selection.kcenter_greedy(z, 3, seed=0, already_selected=[0]).tolist() == [4, 2, 1]


def test_kcenter_picks_the_outliers_first(selector):
    assert set(selector("kcenter", 4, seed=0, already_selected=[0]).tolist()) >= set(OUTLIERS)


# --- k-means ------------------------------------------------------------------------------

def test_lloyd_iterations_equal_scikit_learn_from_the_same_start():
    z = torch.randn(400, 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    start = selection.seeding_rows(z, 7, torch.Generator().manual_seed(2), torch.zeros(0, dtype=torch.long))
    ours_centroids, ours_labels = selection.kmeans(z, 7, seed=2, iterations=50)
    theirs = KMeans(7, init=z[start].numpy(), n_init=1, max_iter=50, tol=0, algorithm="lloyd").fit(z.numpy())
    np.testing.assert_array_equal(ours_labels.numpy(), theirs.labels_)
    np.testing.assert_allclose(ours_centroids.numpy(), theirs.cluster_centers_, atol=1e-10)


def test_kmeans_picks_the_molecule_nearest_the_mean_of_each_cluster(pool, selector):
    splits = 0
    for seed in range(12):
        picks = selector("kmeans", 2, seed).tolist()
        splits += sorted(cluster_of(picks)) == ["left", "right"]
        _, labels = selector.clustering(2, seed, torch.zeros(0, dtype=torch.long))
        for row in picks:
            mean = pool[labels == labels[row]].mean(dim=0)
            assert row == int((pool - mean).norm(dim=1).argmin())
    # k-means is a local search: a seeding that puts a centre on an outlier keeps it there (2 seeds of 12)
    assert splits == 10


def test_kmeans_warm_start_keeps_the_labelled_rows_as_fixed_centroids(pool, selector):
    centroids, labels = selector.clustering(1, 0, torch.tensor([0, 1]))
    torch.testing.assert_close(centroids[:2], pool[[0, 1]])  # never moved
    assert cluster_of(selector("kmeans", 1, seed=0, already_selected=[0, 1]).tolist()) == ["right"]


def test_kmeans_and_typiclust_share_one_clustering(pool):
    select = selection.Selector(pool, resolve_config())
    select("kmeans", 3, seed=1)
    select("typiclust", 3, seed=1)
    select("typiclust", 1, seed=1, already_selected=[0, 40])
    assert sorted(select._clusterings) == [(3, 1, ())]


# --- TypiClust ----------------------------------------------------------------------------

def brute_force_typicality(points, k):
    distance = np.linalg.norm(points[:, None] - points[None], axis=-1)
    return 1.0 / np.sort(distance, axis=1)[:, 1:k + 1].mean(axis=1)


def test_typiclust_picks_the_most_typical_molecule_of_each_cluster_and_no_outlier(pool, selector):
    for n in (2, 4, 8):
        picks = selector("typiclust", n, seed=0).tolist()
        assert "outlier" not in cluster_of(picks)
    _, labels = selector.clustering(2, 0, torch.zeros(0, dtype=torch.long))
    for row in selector("typiclust", 2, seed=0).tolist():
        members = torch.nonzero(labels == labels[row]).flatten().numpy()
        assert len(members) > 20
        assert row == members[np.argmax(brute_force_typicality(pool[members].numpy(), 20))]


def test_typiclust_skips_tiny_clusters_until_the_others_are_used_up(pool, selector):
    _, labels = selector.clustering(5, 0, torch.zeros(0, dtype=torch.long))
    sizes = torch.bincount(labels).tolist()
    assert sorted(sizes)[:3] == [1, 1, 1]  # five clusters: the outliers are clusters of their own
    assert "outlier" not in cluster_of(selector("typiclust", 5, seed=0).tolist())
    everything = selection.typiclust_picks(pool, labels, 63, torch.zeros(0, dtype=torch.long), 20, 5).tolist()
    assert sorted(everything[-3:]) == OUTLIERS  # visited only once the two large clusters are used up


def test_typiclust_warm_start_covers_a_cluster_first(selector):
    assert cluster_of(selector("typiclust", 1, seed=0, already_selected=[0, 1, 2]).tolist()) == ["right"]


# --- hybrid -------------------------------------------------------------------------------

SWITCH = 6


@pytest.fixture(scope="module")
def hybrid_selector(pool):
    return selection.Selector(pool, resolve_config({"HYBRID_SWITCH": SWITCH}))


def test_hybrid_is_typiclust_up_to_the_switch(hybrid_selector):
    for n in (1, 4, SWITCH):
        assert hybrid_selector("hybrid", n, seed=2).tolist() == hybrid_selector("typiclust", n, seed=2).tolist()


def test_hybrid_turns_to_kcenter_greedy_warm_started_from_its_typical_picks(pool, hybrid_selector):
    picks = hybrid_selector("hybrid", 20, seed=2)
    typical = hybrid_selector("typiclust", SWITCH, seed=2)
    assert picks[:SWITCH].tolist() == typical.tolist()
    assert picks[SWITCH:].tolist() == selection.kcenter_greedy(pool, 20 - SWITCH, 0, typical).tolist()
    assert len(set(picks.tolist())) == 20
    assert "outlier" not in cluster_of(typical.tolist())
    assert sorted(picks[SWITCH:SWITCH + 3].tolist()) == OUTLIERS  # coverage reaches what TypiClust skips


def test_hybrid_is_seeded(pool, hybrid_selector):
    again = selection.Selector(pool, resolve_config({"HYBRID_SWITCH": SWITCH}))
    assert again("hybrid", 20, seed=3).tolist() == hybrid_selector("hybrid", 20, seed=3).tolist()
    assert hybrid_selector("hybrid", 20, seed=2).tolist() != hybrid_selector("hybrid", 20, seed=3).tolist()


def test_hybrid_counts_the_warm_start_towards_the_switch(pool, hybrid_selector):
    start = [0, 31, 60]  # three labels: three typical picks reach the switch
    picks = hybrid_selector("hybrid", 10, seed=2, already_selected=start)
    typical = hybrid_selector("typiclust", SWITCH - 3, seed=2, already_selected=start)
    assert picks[:3].tolist() == typical.tolist()
    coverage = selection.kcenter_greedy(pool, 7, 0, start + typical.tolist())
    assert picks[3:].tolist() == coverage.tolist()
    everything = hybrid_selector("hybrid", 60, seed=2, already_selected=start)
    assert sorted(everything.tolist()) == sorted(set(range(63)) - set(start))
    labelled = list(range(SWITCH + 2))  # past the switch already: coverage only
    assert hybrid_selector("hybrid", 5, seed=2, already_selected=labelled).tolist() == \
        selection.kcenter_greedy(pool, 5, 0, labelled).tolist()


# --- kernel herding ------------------------------------------------------------------------

def test_herding_follows_the_density_and_never_starts_at_an_outlier(pool, selector):
    picks = selector("herding", 6, seed=0).tolist()
    assert "outlier" not in cluster_of(picks)
    assert sorted(cluster_of(picks[:2])) == ["left", "right"]  # the second pick balances the first
    width = selection.median_distance(pool, torch.Generator().manual_seed(0))  # HERDING_WIDTH = 1
    mean_kernel = torch.exp(-torch.cdist(pool, pool) ** 2 / (2 * width ** 2)).mean(dim=1)
    assert picks[0] == int(mean_kernel.argmax())  # the first pick is the densest molecule


def test_herding_equals_the_greedy_rule_written_out():
    z = torch.randn(80, 3, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    picks = selection.kernel_herding(z, 10, seed=1, width=0.5, sample_size=80, already_selected=[7])
    width = 0.5 * selection.median_distance(z, torch.Generator().manual_seed(1))
    kernel = torch.exp(-torch.cdist(z, z) ** 2 / (2 * width ** 2))
    chosen = [7]
    for _ in range(10):
        score = kernel.mean(dim=1) - kernel[:, chosen].sum(dim=1) / (len(chosen) + 1)
        score[chosen] = -float("inf")
        chosen.append(int(score.argmax()))
    assert picks.tolist() == chosen[1:]


# --- random -------------------------------------------------------------------------------

def test_random_with_a_warm_start_is_the_seeded_order_without_the_labelled_rows(pool):
    order = torch.randperm(63, generator=torch.Generator().manual_seed(2)).tolist()
    picks = selection.random_selection(pool, 10, seed=2, already_selected=[order[0], order[3]])
    assert picks.tolist() == [r for r in order if r not in (order[0], order[3])][:10]


# --- selection on principal components ---------------------------------------------------

def latents_arrays(z):
    return {"z_all": z.numpy(), "idx_train": np.arange(len(z))}


def test_all_principal_components_keep_every_distance():
    z = torch.randn(50, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    projected = selection.principal_components(z, 6)
    exact = "donot_use_mm_for_euclid_dist"
    assert torch.allclose(torch.cdist(projected, projected, compute_mode=exact), torch.cdist(z, z, compute_mode=exact))
    assert projected.var(dim=0).diff().le(0).all()  # leading components first


def test_selection_dim_projects_the_pool_and_changes_the_picks():
    """A pool spread widely along x and y, whose outliers lie along a narrow z: on the two leading
    components k-center never sees them."""
    generator = torch.Generator().manual_seed(1)
    z = torch.cat([torch.randn(200, 3, generator=generator) * torch.tensor([20.0, 10.0, 0.01]),
                   torch.tensor([[0.0, 0.0, 30.0], [0.0, 0.0, -30.0]])])
    full = selection.selection_latents(latents_arrays(z), resolve_config({"KCENTER_STANDARDIZE": False}), "cpu")
    cfg = resolve_config({"KCENTER_STANDARDIZE": False, "SELECTION_DIM": 2})
    reduced = selection.selection_latents(latents_arrays(z), cfg, "cpu")
    assert reduced.shape == (202, 2) and full.shape == (202, 3)
    assert {200, 201} <= set(selection.kcenter_greedy(full, 10, seed=0).tolist())
    assert not {200, 201} & set(selection.kcenter_greedy(reduced, 40, seed=0).tolist())


def test_selection_dim_above_the_latent_width_is_an_input_error():
    with pytest.raises(InputError, match="SELECTION_DIM=4: expected None or 1..3"):
        selection.selection_latents(latents_arrays(torch.zeros(10, 3)), resolve_config({"SELECTION_DIM": 4}), "cpu")


# --- Gaussian-process posterior variance ---------------------------------------------------

def dense_posterior_variance(kernel, observed, noise):
    """1 - k_x^T (K_SS + noise I)^-1 k_x for every row, from the full kernel matrix (n, n), float64."""
    rows = torch.tensor(observed)
    gram = kernel[rows][:, rows] + noise * torch.eye(len(rows), dtype=torch.float64)
    return 1.0 - (kernel[:, rows] * torch.linalg.solve(gram, kernel[rows]).T).sum(dim=1)


def test_gp_variance_picks_the_largest_dense_posterior_variance():
    z = torch.randn(150, 4, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    picks, variances = selection.gp_variance(z, 30, seed=2, width=0.7, noise=0.05, already_selected=[5, 90])
    width = 0.7 * selection.median_distance(z, torch.Generator().manual_seed(2))
    kernel = torch.exp(-torch.cdist(z, z) ** 2 / (2 * width ** 2))
    observed = [5, 90]
    for pick, variance in zip(picks.tolist(), variances.tolist()):
        dense = dense_posterior_variance(kernel, observed, 0.05)
        assert variance == pytest.approx(float(dense[pick]), abs=1e-12)
        dense[observed] = -1.0
        assert pick == int(dense.argmax())
        observed.append(pick)
    assert variances.diff().le(1e-12).all()  # each observation only explains variance away


def test_integrated_score_picks_the_largest_dense_pool_variance_reduction(monkeypatch):
    monkeypatch.setattr(selection, "REFERENCE_ROWS", 40)  # fewer reference rows than the pool: the sum is on them
    z = torch.randn(150, 4, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    picks, variances = selection.gp_variance(z, 25, seed=2, width=0.7, noise=0.05, already_selected=[5, 90],
                                             score="integrated")
    references = selection.reference_rows(150)
    assert len(references) == 40 and references[0] == 0 and references[-1] == 149
    width = 0.7 * selection.median_distance(z, torch.Generator().manual_seed(2))
    kernel = torch.exp(-torch.cdist(z, z) ** 2 / (2 * width ** 2))
    observed = [5, 90]
    for pick, variance in zip(picks.tolist(), variances.tolist()):
        before = dense_posterior_variance(kernel, observed, 0.05)[references].sum()
        removed = torch.stack([before - dense_posterior_variance(kernel, observed + [row], 0.05)[references].sum()
                               for row in range(150)])  # what observing each row removes from the references
        removed[observed] = -1.0
        assert pick == int(removed.argmax())
        assert variance == pytest.approx(float(dense_posterior_variance(kernel, observed, 0.05)[pick]), abs=1e-12)
        observed.append(pick)
    plain = selection.gp_variance(z, 25, seed=2, width=0.7, noise=0.05, already_selected=[5, 90])[0]
    assert picks.tolist() != plain.tolist()


def test_integrated_score_reads_the_seed_only_through_the_median_sample(monkeypatch):
    z = torch.randn(300, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    picks = {seed: selection.gp_variance(z, 20, seed, 1.0, 0.01, score="integrated")[0].tolist() for seed in (0, 1)}
    assert picks[0] == picks[1]  # every row measures the median distance of a pool this small
    monkeypatch.setattr(selection, "MEDIAN_SAMPLE", 50)
    widths = {seed: selection.median_distance(z, torch.Generator().manual_seed(seed)) for seed in (0, 1)}
    assert widths[0] != widths[1]


def test_integrated_score_prefers_a_dense_cluster_to_an_outlier():
    cluster = torch.randn(60, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 0.1
    z = torch.cat([cluster, torch.tensor([[8.0, 8.0]], dtype=torch.float64)])  # row 60: far from everything
    assert int(selection.gp_variance(z, 2, seed=0, width=1.0, noise=0.01, already_selected=[0])[0][0]) == 60
    first = int(selection.gp_variance(z, 1, seed=0, width=1.0, noise=0.01, score="integrated")[0][0])
    assert first < 60


def test_gp_variance_starts_at_the_seeded_row_and_breaks_ties_to_the_lowest_row():
    z = torch.randn(200, 3, generator=torch.Generator().manual_seed(0))
    for seed in range(3):
        first = int(torch.randint(200, (), generator=torch.Generator().manual_seed(seed)))
        picks, variances = selection.gp_variance(z, 2, seed, width=1.0, noise=0.01)
        assert int(picks[0]) == first and float(variances[0]) == 1.0  # the prior variance, the same everywhere
    line = torch.tensor([[0.0], [-1.0], [1.0], [-1.0]])  # rows 1, 2 and 3 equally far from the labelled row 0
    assert selection.gp_variance(line, 2, seed=0, width=1.0, noise=0.01, already_selected=[0])[0].tolist() == [1, 2]
