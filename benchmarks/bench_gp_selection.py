"""Selection time of gp_variance and adaptive against kcenter, on one synthetic pool in one process.

Each strategy picks the largest budget of SAMPLING_NS once, at one seed, as the experiment does for a
nested strategy: kcenter and gp_variance in one greedy run, adaptive in the rounds of ADAPTIVE_ROUNDS
(round 1 gp_variance, each later one a leave-one-out kernel fit on the labels of the rows picked so far,
then greedy posterior variance conditioned on them). The pool is standard normal (n, d) float32,
standardized as the experiment does; its labels, which only adaptive reads, are a smooth function of
the first three columns plus noise (as tests/conftest.py's synthetic latents).

    python benchmarks/bench_gp_selection.py --out benchmarks/results/gp_selection_cpu.json
    python benchmarks/bench_gp_selection.py --pool 20000 --dim 128    # quicker
"""
import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the package modules live in the repo root

import adaptive  # noqa: E402
import selection  # noqa: E402
from cli import resolve_config, run_cli  # noqa: E402
from utils import write_text  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pool", type=int, default=100_000, help="rows of the pool")
    parser.add_argument("--dim", type=int, default=640, help="columns of the pool")
    parser.add_argument("--seed", type=int, default=0, help="the selection seed")
    parser.add_argument("--out", type=Path, help="also write the numbers here as JSON")
    return parser.parse_args(argv)


def synthetic_pool(n, dim, seed=0):
    """Standardized standard-normal latents (n, dim) float32 and labels (n,) float64."""
    generator = torch.Generator().manual_seed(seed)
    z = torch.randn(n, dim, generator=generator)
    y = torch.tanh(z[:, 0] + 0.5 * z[:, 1] * z[:, 2]).double() + 0.02 * torch.randn(n, generator=generator).double()
    return selection.standardized_latents(z, slice(None)), y


def main(argv=None):
    args = parse_args(argv)
    cfg = resolve_config()
    budget = cfg.SAMPLING_NS[-1]
    z, y = synthetic_pool(args.pool, args.dim)
    runs = {"kcenter": lambda: selection.kcenter_greedy(z, budget, args.seed),
            "gp_variance": lambda: selection.gp_variance(z, budget, args.seed, cfg.GP_WIDTH, cfg.GP_NOISE,
                                                         score=cfg.GP_SCORE)[0],
            "adaptive": lambda: adaptive.adaptive_selection(z, y, args.seed, cfg)[0]}
    seconds, picks = {}, {}
    for strategy, run in runs.items():
        start = time.perf_counter()
        picks[strategy] = set(run().tolist())
        seconds[strategy] = time.perf_counter() - start
        print(f"{strategy}: {seconds[strategy]:.1f} s for {budget} picks", flush=True)
    pairs = (("gp_variance", "kcenter"), ("adaptive", "gp_variance"))
    shared = {f"{a}/{b}": len(picks[a] & picks[b]) for a, b in pairs}
    print(f"picks in common: {shared}")
    if args.out:
        write_text(args.out, json.dumps({"pool": args.pool, "dim": args.dim, "seed": args.seed, "budget": budget,
                                         "adaptive_rounds": cfg.ADAPTIVE_ROUNDS, "gp_width": cfg.GP_WIDTH,
                                         "gp_noise": cfg.GP_NOISE, "gp_score": cfg.GP_SCORE,
                                         "torch_threads": torch.get_num_threads(),
                                         "seconds": seconds, "picks_in_common": shared}, indent=1))
    return seconds


if __name__ == "__main__":
    run_cli(main)
