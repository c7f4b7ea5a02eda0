"""Which k-means should kmeans and typiclust use? The package's torch code (selection.kmeans: greedy
k-means++ seeding, then Lloyd rounds) against scikit-learn's KMeans and faiss's Kmeans, on the
experiment's pool size, at every budget of the default grid, with the same number of Lloyd rounds.

Each implementation clusters the pool into k = N clusters for every N of SAMPLING_NS; the table gives
its seconds per seed and the mean squared distance to the nearest centroid (the k-means objective;
lower is better), for the seeds given. The whole grid runs every seed of SAMPLING_SEEDS, so its time
is the per-seed time times their number.

    python benchmarks/bench_kmeans.py --out benchmarks/results/kmeans_cpu.json            # synthetic pool
    python benchmarks/bench_kmeans.py --latents runs/full/latents_qm9.npz --seeds 0 1      # a real pool

The synthetic pool is a Gaussian mixture of 104,665 x 128 float32 rows (50 components, standardized
per column), the size of the QM9 training pool. faiss is optional: without it its rows are skipped.
"""
import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.cluster import KMeans

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the package modules live in the repo root

import latents  # noqa: E402
import selection  # noqa: E402
from cli import resolve_config, run_cli  # noqa: E402
from utils import write_text  # noqa: E402

POOL, DIM, COMPONENTS = 104_665, 128, 50


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--latents", type=Path, help="latents_qm9.npz whose pool to cluster (default: synthetic)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0], help="seeds timed per implementation")
    parser.add_argument("--ns", nargs="+", type=int, help="budgets k (default: SAMPLING_NS)")
    parser.add_argument("--implementations", nargs="+", default=["torch", "sklearn", "faiss"])
    parser.add_argument("--pool", type=int, default=POOL, help="rows of the synthetic pool")
    parser.add_argument("--out", type=Path, help="also write the numbers here as JSON")
    return parser.parse_args(argv)


def synthetic_pool(n, seed=0):
    """A Gaussian mixture (n, DIM) float32, standardized per column as the experiment does."""
    rng = np.random.default_rng(seed)
    means = 3.0 * rng.standard_normal((COMPONENTS, DIM), dtype=np.float32)
    scales = rng.uniform(0.5, 1.5, COMPONENTS).astype(np.float32)
    component = rng.choice(COMPONENTS, n, p=rng.dirichlet(np.ones(COMPONENTS)))
    z = means[component] + scales[component, None] * rng.standard_normal((n, DIM), dtype=np.float32)
    return (z - z.mean(axis=0)) / z.std(axis=0)


def objective(z, centroids):
    """Mean squared distance of every row to its nearest centroid, in float64."""
    z, centroids = torch.as_tensor(z), torch.as_tensor(centroids)
    labels = selection.nearest_centroid(z, centroids)
    return float(((z - centroids[labels]).double() ** 2).sum(dim=1).mean())


def torch_kmeans(z, k, seed, iterations):
    return selection.kmeans(torch.as_tensor(z), k, seed, iterations)[0].numpy()


def sklearn_kmeans(z, k, seed, iterations):
    model = KMeans(k, init="k-means++", n_init=1, max_iter=iterations, tol=0.0, algorithm="lloyd", random_state=seed)
    return model.fit(z).cluster_centers_


def faiss_kmeans(z, k, seed, iterations):
    import faiss
    model = faiss.Kmeans(z.shape[1], k, niter=iterations, seed=seed, max_points_per_centroid=len(z) // k + 1)
    model.train(z)  # every row, not faiss's default subsample of 256 per centroid: the same data as the others
    return model.centroids


IMPLEMENTATIONS = {"torch": torch_kmeans, "sklearn": sklearn_kmeans, "faiss": faiss_kmeans}


def available(name):
    if name != "faiss":
        return True
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


def main(argv=None):
    args = parse_args(argv)
    cfg = resolve_config()
    ns = args.ns or cfg.SAMPLING_NS
    if args.latents:
        arrays = latents.load_latents(args.latents)
        z = selection.selection_latents(arrays, cfg, torch.device("cpu")).numpy()
        source = str(args.latents)
    else:
        z, source = synthetic_pool(args.pool), "synthetic Gaussian mixture"
    z = np.ascontiguousarray(z, dtype=np.float32)
    report = {"pool": list(z.shape), "source": source, "ns": ns, "seeds": args.seeds,
              "iterations": cfg.KMEANS_ITERATIONS, "threads": torch.get_num_threads(),
              "load_average_before": os.getloadavg(), "rows": []}
    for name in args.implementations:
        if not available(name):
            print(f"{name}: not installed, skipped")
            continue
        for seed in args.seeds:
            for k in ns:
                start = time.perf_counter()
                centroids = IMPLEMENTATIONS[name](z, k, seed, cfg.KMEANS_ITERATIONS)
                seconds = time.perf_counter() - start
                row = {"implementation": name, "seed": seed, "k": k, "seconds": seconds,
                       "objective": objective(z, np.asarray(centroids, dtype=np.float32))}
                report["rows"].append(row)
                print(f"{name:8s} seed {seed} k {k:5d}: {seconds:7.2f} s, objective {row['objective']:.4f}", flush=True)
    report["load_average_after"] = os.getloadavg()
    report["grid"] = grid_table(report["rows"], len(cfg.SAMPLING_SEEDS))
    print(report["grid"])
    if args.out:
        write_text(args.out, json.dumps(report, indent=2))
    return report


def grid_table(rows, grid_seeds):
    """Per implementation: mean seconds of one seed's budgets, that times the grid's seeds, and the
    objective at each k relative to the torch code's (1.00 = equal, above 1 = worse clusters)."""
    lines = []
    names = list(dict.fromkeys(row["implementation"] for row in rows))
    reference = {(row["seed"], row["k"]): row["objective"] for row in rows if row["implementation"] == "torch"}
    for name in names:
        mine = [row for row in rows if row["implementation"] == name]
        per_seed = sum(row["seconds"] for row in mine) / len({row["seed"] for row in mine})
        ratios = [row["objective"] / reference[row["seed"], row["k"]] for row in mine
                  if (row["seed"], row["k"]) in reference]
        quality = f"objective / torch's: {min(ratios):.3f}-{max(ratios):.3f}" if ratios else ""
        lines.append(f"{name:8s} {per_seed:7.1f} s per seed, {grid_seeds * per_seed:7.1f} s for {grid_seeds} seeds; "
                     f"{quality}")
    return "\n".join(lines)


if __name__ == "__main__":
    run_cli(main)
