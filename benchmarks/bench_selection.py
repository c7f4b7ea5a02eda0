"""Selection of the default grid on wide latents: seconds per strategy, and what SELECTION_DIM costs in picks.

For each latent width, a synthetic pool of the QM9 pool's size is standardized as the experiment does;
then every strategy of SAMPLING_STRATEGIES picks for every budget of SAMPLING_NS at one seed, as
sampling_mlp_experiment.py does (one run to the largest N for a nested strategy, one per N otherwise),
once on all columns and once on each SELECTION_DIM given. The grid runs every seed of SAMPLING_SEEDS,
so its selection time is about the per-seed time times their number. Agreement: the share of the picks
of each budget that the full-width picks hold too, averaged over the budgets.

    python benchmarks/bench_selection.py --out benchmarks/results/selection_cpu.json
    python benchmarks/bench_selection.py --dims 128 --selection-dims 32 --pool 20000    # quicker

The pool is a Gaussian mixture (50 components, component means 3 N(0, 1), within-component noise whose
scale falls as 1 / sqrt(column + 1), so the spectrum decays as real latents' do), float32. Full-QM9
SevenNet-0 latents have 640 columns, the package's own 128.
"""
import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the package modules live in the repo root

import selection  # noqa: E402
from cli import resolve_config, run_cli  # noqa: E402
from utils import write_text  # noqa: E402

POOL, COMPONENTS = 104_665, 50


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dims", nargs="+", type=int, default=[640, 128], help="latent widths of the pools")
    parser.add_argument("--selection-dims", nargs="+", type=int, default=[64, 32], help="SELECTION_DIM values timed")
    parser.add_argument("--pool", type=int, default=POOL, help="rows of each pool")
    parser.add_argument("--seed", type=int, default=0, help="the selection seed")
    parser.add_argument("--out", type=Path, help="also write the numbers here as JSON")
    return parser.parse_args(argv)


def synthetic_pool(n, dim, seed=0):
    """A Gaussian mixture (n, dim) float32, standardized per column as the experiment does."""
    rng = np.random.default_rng(seed)
    means = 3.0 * rng.standard_normal((COMPONENTS, dim), dtype=np.float32)
    noise = (1.0 / np.sqrt(np.arange(1, dim + 1))).astype(np.float32)
    component = rng.choice(COMPONENTS, n, p=rng.dirichlet(np.ones(COMPONENTS)))
    z = means[component] + noise * rng.standard_normal((n, dim), dtype=np.float32)
    return selection.standardized_latents(torch.as_tensor(z), slice(None))


def select_grid(z, cfg, seed):
    """{strategy: (seconds, {N: picks})} at one seed over every budget, as the experiment selects."""
    selector, ns, timings = selection.Selector(z, cfg), cfg.SAMPLING_NS, {}
    for strategy in cfg.SAMPLING_STRATEGIES:
        start = time.perf_counter()
        if selection.NESTED[strategy]:
            order = selector(strategy, ns[-1], seed)
            picks = {n: order[:n] for n in ns}
        else:
            picks = {n: selector(strategy, n, seed) for n in ns}
        timings[strategy] = (time.perf_counter() - start, picks)
    return timings


def agreement(picks, reference):
    """Mean over budgets of the share of picks that the reference picks hold too."""
    return float(np.mean([len(set(picks[n].tolist()) & set(reference[n].tolist())) / n for n in picks]))


def main(argv=None):
    args = parse_args(argv)
    cfg = resolve_config()
    results = []
    for dim in args.dims:
        z = synthetic_pool(args.pool, dim)
        full = select_grid(z, cfg, args.seed)
        for selection_dim in [None, *args.selection_dims]:
            start = time.perf_counter()
            projected = z if selection_dim is None else selection.principal_components(z, selection_dim)
            projection_s = time.perf_counter() - start
            timings = full if selection_dim is None else select_grid(projected, cfg, args.seed)
            row = {"dim": dim, "selection_dim": selection_dim, "projection_s": projection_s,
                   "seconds": {s: t for s, (t, _) in timings.items()},
                   "agreement": {s: agreement(picks, full[s][1]) for s, (_, picks) in timings.items()}}
            row["total_s"] = projection_s + sum(row["seconds"].values())
            results.append(row)
            print(f"d={dim} SELECTION_DIM={selection_dim}: projection {projection_s:.1f} s, "
                  + ", ".join(f"{s} {t:.1f} s ({row['agreement'][s]:.2f})" for s, t in row["seconds"].items())
                  + f"; one seed {row['total_s']:.1f} s", flush=True)
            if args.out:  # after every row: a long run that is stopped keeps what it measured
                write_text(args.out, json.dumps({"pool": args.pool, "seed": args.seed, "ns": cfg.SAMPLING_NS,
                                                 "torch_threads": torch.get_num_threads(), "results": results},
                                                indent=1))


if __name__ == "__main__":
    run_cli(main)
