"""Which pool molecules to label: label-free selection strategies on the latents.

Every strategy sees only the pool latents z (n, d) and returns pool rows (n_samples,) in pick
order, never a row twice and never a row of `already_selected` (molecules labelled before: the
warm start). The seed fixes every random choice, so the same seed gives the same picks.

- random: a seeded permutation.
- kcenter: k-center greedy, the farthest row from every centre so far (coverage; picks outliers).
- herding: kernel herding, each pick the row whose kernel mean embedding the picks so far match
  worst (density-matching; Chen, Welling and Smola 2010).
- kmeans: k-means with one centroid per pick; the pool row nearest each centroid.
- typiclust: TypiClust (Hacohen, Dekel and Weinshall 2022): k-means clusters, the most typical row
  (densest in its cluster) of each cluster not yet covered by a label, largest clusters first.
- hybrid: typiclust until the labels (warm start and picks) number HYBRID_SWITCH, then k-center
  greedy warm-started from all of them: typical rows while labels are few, coverage later.
- gp_variance: greedy Gaussian-process posterior variance, each pick the row the picks so far leave
  most uncertain under a Gaussian kernel (uncertainty without labels: a GP's variance never reads them).

random, kcenter, herding and gp_variance are nested: the first k picks of a run answer every budget k.
kmeans, typiclust and hybrid are not: each budget is its own clustering (hybrid's, up to the switch).
Selector shares the k-means runs of one pool between kmeans, typiclust and hybrid.
"""
import math

import torch

from utils import InputError, standardize, std_floor

NESTED = {"random": True, "kcenter": True, "herding": True, "kmeans": False, "typiclust": False, "hybrid": False,
          "gp_variance": True}
STRATEGIES = list(NESTED)
ROW_CHUNK = 16_384  # pool rows per distance block: (ROW_CHUNK, k) floats stay well below a GB
MEDIAN_SAMPLE = 1_000  # rows whose pairwise distances set the herding kernel width
SEEDING_ROWS = (10_000, 20)  # k-means++ seeds from a seeded subsample of max(10,000, 20 k) rows (all if fewer)


def warm_start_rows(already_selected, device):
    return torch.as_tensor([] if already_selected is None else already_selected, dtype=torch.long, device=device)


def check_budget(strategy, n_rows, n_samples, n_labelled):
    if not 1 <= n_samples <= n_rows - n_labelled:
        raise InputError(f"{strategy}: cannot pick {n_samples} from {n_rows} rows with {n_labelled} already selected")


# --- distances -----------------------------------------------------------------------

def nearest_distance(z, centres):
    """Euclidean distance of every row of z (n, d) to the nearest of centres (c, d), from exact
    differences in one pass over z: (n,)."""
    return torch.cdist(z, centres, compute_mode="donot_use_mm_for_euclid_dist").amin(dim=1)


def nearest_centroid(z, centroids):
    """Index (n,) of the nearest centroid (k, d) of every row of z (n, d), by |c|^2 - 2 z.c (one
    matmul per block of rows; |z|^2 does not change the argmin)."""
    norms = (centroids ** 2).sum(dim=1)
    return torch.cat([(norms - 2 * rows @ centroids.T).argmin(dim=1) for rows in z.split(ROW_CHUNK)])


def squared_norms(x):
    return (x * x).sum(dim=1)


def squared_distances(a, b, a_norms=None, b_norms=None):
    """(len(a), len(b)) squared Euclidean distances as |a|^2 - 2 a.b + |b|^2: one matmul, much faster
    than exact differences, clamped at 0 against rounding. Norms of a reused matrix may be passed."""
    a_norms = squared_norms(a) if a_norms is None else a_norms
    b_norms = squared_norms(b) if b_norms is None else b_norms
    return (a_norms[:, None] - 2 * a @ b.T + b_norms[None, :]).clamp_(min=0)


# --- random and k-center ---------------------------------------------------------------

def random_selection(z, n_samples, seed, already_selected=None):
    """A seeded random order of the rows of z not yet selected, cut to n_samples."""
    start = warm_start_rows(already_selected, z.device)
    check_budget("random", len(z), n_samples, len(start))
    order = torch.randperm(len(z), generator=torch.Generator().manual_seed(seed)).to(z.device)
    if len(start):
        taken = torch.zeros(len(z), dtype=torch.bool, device=z.device)
        taken[start] = True
        order = order[~taken[order]]
    return order[:n_samples]


def kcenter_greedy(z, n_samples, seed, already_selected=None):
    """Rows of z (n, d) picked greedily: each is the row farthest from every centre so far (a
    2-approximation of the minimax covering). The first centre is drawn with `seed`, unless
    `already_selected` rows are given: then they are the starting centres and are never picked.
    O(n d) per pick, O(n) memory."""
    n = z.shape[0]
    start = warm_start_rows(already_selected, z.device)
    check_budget("k-center", n, n_samples, len(start))
    min_dist = torch.full((n,), float("inf"), dtype=z.dtype, device=z.device)
    if len(start):
        for chunk in start.split(1024):  # the nearest labelled row, a block of them at a time
            min_dist = torch.minimum(min_dist, nearest_distance(z, z[chunk]))
        min_dist[start] = -1.0  # chosen rows never come back
        centre = torch.argmax(min_dist).view(1)
    else:
        centre = torch.randint(n, (), generator=torch.Generator().manual_seed(seed)).view(1).to(z.device)
    selected = torch.empty(n_samples, dtype=torch.long, device=z.device)
    for k in range(n_samples):  # `centre` stays a 1-element tensor: no pick waits for the device
        selected[k:k + 1] = centre
        min_dist = torch.minimum(min_dist, nearest_distance(z, z.index_select(0, centre)))
        min_dist.index_fill_(0, centre, -1.0)
        centre = torch.argmax(min_dist).view(1)
    return selected


# --- kernel herding ----------------------------------------------------------------------

def median_distance(z, generator):
    """Median pairwise distance among up to MEDIAN_SAMPLE seeded rows of z: the scale of the latents."""
    rows = z[torch.randperm(len(z), generator=generator)[:MEDIAN_SAMPLE].to(z.device)]
    return pairwise_median(squared_distances(rows, rows))


def pairwise_median(squared):
    """The median distance over the distinct pairs of a (n, n) matrix of squared distances."""
    upper = torch.triu_indices(len(squared), len(squared), offset=1, device=squared.device)
    return squared[upper[0], upper[1]].median().sqrt()


def gaussian_gamma(width, median):
    """The gamma of exp(-gamma |x - x'|^2) for a kernel width of `width` median distances."""
    return 1.0 / (2.0 * (width * median) ** 2)


def gaussian_kernel_sum(z, centres, gamma):
    """sum_j exp(-gamma |z_i - c_j|^2) for every row of z (n, d) over centres (c, d): (n,)."""
    centre_norms = squared_norms(centres)
    return torch.cat([torch.exp(-gamma * squared_distances(rows, centres, b_norms=centre_norms)).sum(dim=1)
                      for rows in z.split(ROW_CHUNK)])


def kernel_herding(z, n_samples, seed, width, sample_size, already_selected=None):
    """Kernel herding with a Gaussian kernel of width `width` times the median pairwise distance.
    Pick t+1 maximises mean_j k(x, p_j) - sum_{s<=t} k(x, x_s) / (t + 1) over unpicked rows x, where
    p are `sample_size` seeded pool rows (the pool's mean embedding, estimated) and x_s the picks so
    far, the warm-start rows first. Dense regions are picked first, then the picks spread in proportion
    to the density. O(n sample_size d) once, then O(n d) per pick."""
    n = z.shape[0]
    start = warm_start_rows(already_selected, z.device)
    check_budget("herding", n, n_samples, len(start))
    generator = torch.Generator().manual_seed(seed)
    gamma = gaussian_gamma(width, median_distance(z, generator))
    sample = z[torch.randperm(n, generator=generator)[:sample_size].to(z.device)]
    mean_embedding = gaussian_kernel_sum(z, sample, gamma) / len(sample)  # (n,)
    picked_sum = torch.zeros(n, dtype=z.dtype, device=z.device)  # sum of k(x, x_s) over picks so far
    taken = torch.zeros(n, dtype=torch.bool, device=z.device)
    for chunk in start.split(1024):
        picked_sum += gaussian_kernel_sum(z, z[chunk], gamma)
    taken[start] = True
    norms = squared_norms(z)
    selected = torch.empty(n_samples, dtype=torch.long, device=z.device)
    for k in range(n_samples):
        score = mean_embedding - picked_sum / (len(start) + k + 1)
        pick = torch.argmax(score.masked_fill(taken, -float("inf"))).view(1)
        selected[k:k + 1] = pick
        taken[pick] = True
        picked_sum += torch.exp(-gamma * squared_distances(z, z.index_select(0, pick), norms, norms[pick])[:, 0])
    return selected


# --- Gaussian-process posterior variance ---------------------------------------------------

GP_SCORES = ("variance", "integrated")  # GP_SCORE: a row's own posterior variance, or the pool variance it removes
REFERENCE_ROWS = 1000  # evenly spaced pool rows on which "integrated" sums the variance a pick removes


def reference_rows(n):
    """min(n, REFERENCE_ROWS) evenly spaced rows of a pool of n: seed-free, so adaptive's rounds share them,
    and spread over the pool's order (QM9's is by size), where a random sample could cluster."""
    return torch.linspace(0, n - 1, min(n, REFERENCE_ROWS)).round().long().unique()


def posterior_variance_greedy(z, n_samples, gamma, noise, conditioned, first=None, score="variance"):
    """Greedy picks under a Gaussian-process prior on the rows of z (n, d): kernel exp(-gamma |x - x'|^2)
    (prior variance 1), observation noise variance `noise`. The `conditioned` rows (c,) are observed
    first and never picked; then each pick is the row of highest `score` given every row observed so
    far (the lowest row among equals), or `first` when given. score "variance": the row's posterior
    variance (it favours rows far from all others: outliers). "integrated": the posterior variance
    that observing the row removes, summed over the reference rows (Cohn's criterion: it favours rows
    whose neighbourhood is both uncertain and populated). Returns the picks (n_samples,) and the
    posterior variance of each when it was picked (float64).

    A pivoted (incomplete) Cholesky of K + noise I: after k observations, factor (k, n) holds
    K(observed, all) L^-T, so that the posterior variance is 1 - sum of squares of a column; each
    observation adds one row and subtracts its squares: O(n (d + k)) per observation, no n x n
    matrix. Memory: the factor, (c + n_samples) x n float64 (800 MB for 1,000 observations of a
    100,000-row pool), and for "integrated" the posterior covariance with the reference rows, n x
    REFERENCE_ROWS float64 (another 800 MB), at O(n REFERENCE_ROWS) more per observation. float64
    rather than float32, at twice the memory: late in a run the two largest variances are often
    closer than float32's error in them (on a 20,000 x 128 pool, 1,000 picks: errors of 0.3-3e-6, and
    gaps below 1e-6 at 27-46% of the picks), so float32 would pick another row there; float64's
    rounding, near 1e-15, stays far below the smallest gap seen, 6.5e-10."""
    n = z.shape[0]
    factor = torch.empty(len(conditioned) + n_samples, n, dtype=torch.float64, device=z.device)
    variance = torch.ones(n, dtype=torch.float64, device=z.device)
    taken = torch.zeros(n, dtype=torch.bool, device=z.device)
    norms = squared_norms(z)
    references = reference_rows(n).to(z.device) if score == "integrated" else None
    if references is not None:  # (n, m): posterior covariance of every row with each reference row
        covariance = torch.exp(-gamma * squared_distances(z, z[references], norms, norms[references])).double()

    def observe(k, row):
        """The k-th observation, row (1,): one more factor row, and the (co)variances it explains away."""
        kernel = torch.exp(-gamma * squared_distances(z, z.index_select(0, row), norms, norms[row])[:, 0])
        earlier = factor[:k]
        explained = earlier.T @ earlier.index_select(1, row)[:, 0]  # (n,): the covariance the earlier rows account for
        factor[k] = (kernel.double() - explained) / torch.sqrt(variance[row] + noise)
        variance.sub_(factor[k] ** 2)
        taken[row] = True
        if references is not None:
            covariance.addr_(factor[k], factor[k, references], alpha=-1)

    def scores():
        if references is None:
            return variance
        return torch.linalg.vector_norm(covariance, dim=1) ** 2 / (variance + noise)

    for k in range(len(conditioned)):
        observe(k, conditioned[k:k + 1])
    selected = torch.empty(n_samples, dtype=torch.long, device=z.device)
    picked_variance = torch.empty(n_samples, dtype=torch.float64, device=z.device)
    for k in range(n_samples):  # `row` stays a 1-element tensor: no pick waits for the device
        best = torch.argmax(scores().masked_fill(taken, -torch.inf)).view(1)
        row = first.view(1) if k == 0 and first is not None else best
        selected[k:k + 1] = row
        picked_variance[k:k + 1] = variance[row]
        observe(len(conditioned) + k, row)
    return selected, picked_variance


def gp_variance(z, n_samples, seed, width, noise, already_selected=None, score="variance"):
    """Greedy Gaussian-process selection (posterior_variance_greedy, by `score`) with a Gaussian kernel of
    width `width` times the median pairwise pool distance (median_distance, seeded) and noise variance
    `noise`, conditioned on the `already_selected` rows first. Under "variance" the prior variance is the
    same everywhere, so without a warm start the first pick is a seeded random row (kcenter's first
    centre). Returns the picks (n_samples,) and their posterior variance when picked (n_samples,)."""
    n = z.shape[0]
    start = warm_start_rows(already_selected, z.device)
    check_budget("gp_variance", n, n_samples, len(start))
    gamma = gaussian_gamma(width, median_distance(z, torch.Generator().manual_seed(seed)))
    first = None
    if score == "variance" and not len(start):
        first = torch.randint(n, (), generator=torch.Generator().manual_seed(seed)).to(z.device)
    return posterior_variance_greedy(z, n_samples, gamma, noise, start, first, score)


# --- k-means -----------------------------------------------------------------------------

def kmeans_plus_plus(z, k, generator, fixed):
    """k seeded greedy k-means++ centres (rows of z), as scikit-learn seeds k-means: each round draws
    2 + log k candidates with probability proportional to the squared distance to the nearest centre
    so far and keeps the one that lowers the sum of those distances most. The `fixed` rows count as
    centres already. O(n d log k) per centre."""
    n = z.shape[0]
    trials = 2 + int(math.log(k))
    uniforms = torch.rand(k, trials, generator=generator, dtype=torch.float64).to(z.device)
    min_sq = torch.full((n,), float("inf"), dtype=torch.float64, device=z.device)
    for chunk in fixed.split(1024) if len(fixed) else []:
        min_sq = torch.minimum(min_sq, nearest_distance(z, z[chunk]).double() ** 2)
    norms = squared_norms(z)
    centres = torch.empty(k, dtype=torch.long, device=z.device)
    for j in range(k):
        weights = torch.ones_like(min_sq) if j == 0 and len(fixed) == 0 else min_sq
        cumulative = weights.cumsum(0)
        candidates = torch.searchsorted(cumulative, uniforms[j] * cumulative[-1]).clamp_(max=n - 1)  # (trials,)
        candidate_sq = squared_distances(z, z[candidates], norms, norms[candidates]).double()  # (n, trials)
        best = torch.minimum(min_sq[:, None], candidate_sq).sum(dim=0).argmin()
        centres[j] = candidates[best]
        min_sq = torch.minimum(min_sq, candidate_sq[:, best])
    return centres


def seeding_rows(z, k, generator, fixed):
    """The k rows of z that start k-means: greedy k-means++ on max(10,000, 20 k) seeded rows (SEEDING_ROWS;
    every row of a smaller pool), with the `fixed` rows as centres already. Seeding reads its rows once
    per centre, which on the whole pool cost four times the Lloyd rounds (benchmarks/bench_kmeans.py);
    20 rows per cluster still give every dense region its centres, and the Lloyd rounds use every row."""
    size = max(SEEDING_ROWS[0], SEEDING_ROWS[1] * k)
    sample = torch.randperm(len(z), generator=generator)[:size].to(z.device)
    rows = torch.cat([sample, fixed])
    chosen = kmeans_plus_plus(z[rows], k, generator, torch.arange(len(sample), len(rows), device=z.device))
    return rows[chosen]


def kmeans(z, k, seed, iterations, fixed=None):
    """Lloyd's k-means of the rows of z (n, d) into k clusters from a seeded k-means++ start
    (seeding_rows), at most `iterations` rounds (fewer when no row changes cluster). The `fixed` rows
    (f,) are extra centroids that never move, so the k free ones settle where the fixed ones leave the
    pool uncovered. An empty cluster keeps its centroid. Returns centroids (f + k, d), fixed first, and
    each row's cluster (n,)."""
    fixed = warm_start_rows(fixed, z.device)
    generator = torch.Generator().manual_seed(seed)
    centroids = torch.cat([z[fixed], z[seeding_rows(z, k, generator, fixed)]])
    labels = nearest_centroid(z, centroids)
    for _ in range(iterations):
        sums = torch.zeros_like(centroids).index_add_(0, labels, z)
        counts = torch.bincount(labels, minlength=len(centroids)).unsqueeze(1)
        moved = torch.where(counts > 0, sums / counts.clamp(min=1), centroids)
        centroids = torch.cat([centroids[:len(fixed)], moved[len(fixed):]])
        new_labels = nearest_centroid(z, centroids)
        if torch.equal(new_labels, labels):  # the one host sync of a round
            break
        labels = new_labels
    return centroids, labels


def rows_nearest_centroids(z, centroids, taken):
    """For each centroid (k, d) in turn, the nearest row of z not `taken` (n,) and not picked for an
    earlier centroid: (k,). Distinct centroids rarely share a nearest row; when they do, the later
    one takes its nearest free row."""
    norms = squared_norms(z)
    distance = torch.cat([squared_distances(block, z, b_norms=norms) for block in centroids.split(256)])  # (k, n)
    distance[:, taken] = float("inf")
    nearest = distance.argmin(dim=1).tolist()
    picks, used = [], set()
    for j, row in enumerate(nearest):
        if row in used:
            distance[j, list(used)] = float("inf")
            row = int(distance[j].argmin())
        picks.append(row)
        used.add(row)
    return torch.as_tensor(picks, dtype=torch.long, device=z.device)


# --- TypiClust ---------------------------------------------------------------------------

def typicality(members, k_nn):
    """1 / mean distance of each row of members (m, d) to its k_nn nearest other rows: (m,)."""
    norms = squared_norms(members)
    nearest = [squared_distances(rows, members, b_norms=norms).topk(k_nn + 1, dim=1, largest=False).values[:, 1:]
               for rows in members.split(ROW_CHUNK // 4)]  # column 0 is the row itself, at distance 0
    return 1.0 / torch.cat(nearest).sqrt().mean(dim=1)


def ranked_rows(z, rows, k_nn):
    """The rows (m,) of one cluster, most typical first, with K = min(k_nn, m // 2) neighbours: the
    authors' rule for small clusters."""
    if len(rows) < 2:
        return rows.tolist()
    score = typicality(z[rows], max(1, min(k_nn, len(rows) // 2)))
    return rows[torch.argsort(score, descending=True, stable=True)].tolist()


def typiclust_picks(z, labels, n_samples, start, k_nn, min_cluster_size):
    """TypiClust's choice from a clustering `labels` (n,): the clusters of more than `min_cluster_size`
    rows, fewest labelled rows first, then largest first, are visited in turn, and each visit picks
    the unlabelled row of highest typicality in the cluster. Smaller clusters are outlier groups,
    which the paper skips; they are visited (in the same order) only when a budget close to the pool
    size has used up every larger cluster. Typicality is a property of the data, so labelled rows
    count as neighbours too."""
    sizes = torch.bincount(labels, minlength=int(labels.max()) + 1).tolist()
    covered = torch.bincount(labels[start], minlength=len(sizes)).tolist()
    order = sorted(range(len(sizes)), key=lambda c: (covered[c], -sizes[c], c))
    phases = [[c for c in order if sizes[c] > min_cluster_size], [c for c in order if 0 < sizes[c] <= min_cluster_size]]
    taken = set(start.tolist())
    ranked = {}  # cluster -> iterator over its rows, most typical first (ranked when first visited)
    picks = []
    for clusters in phases:
        while clusters and len(picks) < n_samples:
            for cluster in list(clusters):
                if cluster not in ranked:
                    ranked[cluster] = iter(ranked_rows(z, torch.nonzero(labels == cluster).flatten(), k_nn))
                row = next((row for row in ranked[cluster] if row not in taken), None)
                if row is None:  # every row of this cluster is labelled
                    clusters.remove(cluster)
                    continue
                picks.append(row)
                taken.add(row)
                if len(picks) == n_samples:
                    break
    return torch.as_tensor(picks, dtype=torch.long, device=z.device)


# --- one pool, every strategy ---------------------------------------------------------------

class Selector:
    """Every strategy on one pool z (n, d), with the settings of cfg. A k-means run is kept for the
    other clustering strategies: kmeans, typiclust and hybrid at the same seed and k cluster once."""

    def __init__(self, z, cfg):
        self.z, self.cfg = z, cfg
        self._clusterings = {}  # (k, seed, fixed rows) -> (centroids, labels)

    def __call__(self, strategy, n_samples, seed, already_selected=None):
        """Pool rows (n_samples,) chosen by `strategy` (a key of NESTED)."""
        return getattr(self, f"_{strategy}")(n_samples, seed, warm_start_rows(already_selected, self.z.device))

    def clustering(self, k, seed, fixed):
        key = (k, seed, tuple(fixed.tolist()))
        if key not in self._clusterings:
            self._clusterings[key] = kmeans(self.z, k, seed, self.cfg.KMEANS_ITERATIONS, fixed)
        return self._clusterings[key]

    def _random(self, n_samples, seed, start):
        return random_selection(self.z, n_samples, seed, start)

    def _kcenter(self, n_samples, seed, start):
        return kcenter_greedy(self.z, n_samples, seed, start)

    def _herding(self, n_samples, seed, start):
        return kernel_herding(self.z, n_samples, seed, self.cfg.HERDING_WIDTH, self.cfg.HERDING_SAMPLE, start)

    def _gp_variance(self, n_samples, seed, start):
        return gp_variance(self.z, n_samples, seed, self.cfg.GP_WIDTH, self.cfg.GP_NOISE, start, self.cfg.GP_SCORE)[0]

    def _kmeans(self, n_samples, seed, start):
        check_budget("kmeans", len(self.z), n_samples, len(start))
        centroids, _ = self.clustering(n_samples, seed, start)
        taken = torch.zeros(len(self.z), dtype=torch.bool, device=self.z.device)
        taken[start] = True
        return rows_nearest_centroids(self.z, centroids[len(start):], taken)

    def _typiclust(self, n_samples, seed, start):
        check_budget("typiclust", len(self.z), n_samples, len(start))
        _, labels = self.clustering(n_samples + len(start), seed, start[:0])  # the paper: |labelled| + N clusters
        return typiclust_picks(self.z, labels, n_samples, start, self.cfg.TYPICLUST_K,
                               self.cfg.TYPICLUST_MIN_CLUSTER_SIZE)

    def _hybrid(self, n_samples, seed, start):
        """TypiClust picks until the labels, the warm start included, number HYBRID_SWITCH; the rest
        k-center greedy from every label and typical pick. A warm start of HYBRID_SWITCH rows or more
        leaves only k-center picks."""
        check_budget("hybrid", len(self.z), n_samples, len(start))
        n_typical = min(n_samples, max(0, self.cfg.HYBRID_SWITCH - len(start)))
        typical = self._typiclust(n_typical, seed, start) if n_typical else start[:0]
        if n_typical == n_samples:
            return typical
        coverage = kcenter_greedy(self.z, n_samples - n_typical, seed, torch.cat([start, typical]))
        return torch.cat([typical, coverage])


def standardized_latents(z, pool_rows):
    """Latents (M, d) standardized per column with pool statistics. A column's std is at least a tenth
    of the root-mean-square column std: a column (nearly) constant in the pool, such as a rare bin
    of the descriptor control, would otherwise put the few molecules that differ millions of std
    away, where an MLP head's predictions run off to 1e20 eV."""
    return standardize(z, pool_rows, min_std=std_floor(z[pool_rows].std(dim=0)))[0]


def check_gp_score(score):
    if score not in GP_SCORES:
        raise InputError(f"GP_SCORE={score!r}: expected one of {list(GP_SCORES)}")


def check_selection_dim(dim, width):
    if dim is not None and not 1 <= dim <= width:
        raise InputError(f"SELECTION_DIM={dim}: expected None or 1..{width}, the width of the latents")


def principal_components(z, dim):
    """The rows of z (n, d), centred and projected onto their `dim` leading principal components:
    (n, dim). Distances then keep the directions of largest variance; the sign of a component
    does not change any distance."""
    centred = z - z.mean(dim=0)
    _, vectors = torch.linalg.eigh(centred.double().T @ centred.double())  # eigenvalues ascending
    return centred @ vectors[:, -dim:].flip(1).to(z.dtype)


def selection_latents(arrays, cfg, device):
    """The pool latents (n, d or SELECTION_DIM) that every strategy measures: standardized per
    KCENTER_STANDARDIZE, then projected onto SELECTION_DIM principal components (None: all columns)."""
    z_pool = torch.as_tensor(arrays["z_all"][arrays["idx_train"]], dtype=torch.float32, device=device)
    check_selection_dim(cfg.SELECTION_DIM, z_pool.shape[1])
    z = standardized_latents(z_pool, slice(None)) if cfg.KCENTER_STANDARDIZE else z_pool
    return z if cfg.SELECTION_DIM is None else principal_components(z, cfg.SELECTION_DIM)
