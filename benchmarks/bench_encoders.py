"""What a larger encoder costs: training epochs (training.train_epoch) of candidate encoder sizes on
the same molecules, timed in one process with the repeats interleaved, so that a busy machine slows
every size alike. Gives mol/s per size and its ratio to today's default encoder.

    python benchmarks/bench_encoders.py --molecules 1000 --repeats 2 --out benchmarks/results/encoders_cpu.json
    python benchmarks/bench_encoders.py --compile both --sizes default large    # also with ENC_COMPILE

An epoch with ENC_COMPILE first runs once untimed (its compiling); that first epoch's seconds are
reported apart. --molecules 0 trains on every molecule (a full-QM9 epoch).
"""
import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the package modules live in the repo root

from bench_objectives import variant_epoch  # noqa: E402
from cli import run_cli  # noqa: E402
from utils import get_device, write_text  # noqa: E402

SIZES = {"default": {"ENC_HIDDEN_IRREPS": "16x0e + 16x1o", "ENC_NUM_LAYERS": 3},
         "medium": {"ENC_HIDDEN_IRREPS": "32x0e + 16x1o + 8x2e", "ENC_NUM_LAYERS": 4},
         "large": {"ENC_HIDDEN_IRREPS": "64x0e + 32x1o + 16x2e", "ENC_NUM_LAYERS": 5}}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES), help="encoders timed")
    parser.add_argument("--molecules", type=int, default=1000, help="seeded QM9 subset, 80%% of it trains; 0: all")
    parser.add_argument("--repeats", type=int, default=2, help="epochs timed per encoder, interleaved")
    parser.add_argument("--compile", choices=["off", "on", "both"], default="off", help="ENC_COMPILE")
    parser.add_argument("--data-root", help="override DATA_ROOT (where the QM9 cache lives)")
    parser.add_argument("--device", help="cpu, cuda, ... (default: cuda if present)")
    parser.add_argument("--out", type=Path, help="also write the numbers here as JSON")
    return parser.parse_args(argv)


def timed(epoch, device):
    start = time.perf_counter()
    epoch()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def main(argv=None):
    args = parse_args(argv)
    device = get_device(args.device)
    torch.set_flush_denormal(True)  # as the training script does
    compiled = {"off": [False], "on": [True], "both": [False, True]}[args.compile]
    epochs = {(name, flag): variant_epoch({**SIZES[name], "ENC_COMPILE": flag}, args, device)
              for name in args.sizes for flag in compiled}
    first = {key: timed(epoch, device) for key, (epoch, _) in epochs.items() if key[1]}  # compiling
    seconds = {key: [] for key in epochs}
    for _ in range(args.repeats):
        for key, (epoch, _) in epochs.items():
            seconds[key].append(timed(epoch, device))
    rates = {key: count / np.median(seconds[key]) for key, (_, count) in epochs.items()}
    base = rates[args.sizes[0], compiled[0]]
    rows = [{"size": name, **SIZES[name], "compile": flag, "molecules": epochs[name, flag][1],
             "mol_per_s": rate, "ratio": rate / base, "seconds": seconds[name, flag],
             "first_epoch_s": first.get((name, flag))} for (name, flag), rate in rates.items()]
    print(f"{'encoder':<10} {'compile':<8} {'mol/s':>8} {'ratio':>6}  ({device}, {torch.get_num_threads()} threads)")
    for row in rows:
        print(f"{row['size']:<10} {str(row['compile']):<8} {row['mol_per_s']:8.0f} {row['ratio']:6.2f}")
    if args.out:
        write_text(args.out, json.dumps({"device": str(device), "threads": torch.get_num_threads(),
                                         "repeats": args.repeats, "rows": rows}, indent=1))
    return rows


if __name__ == "__main__":
    run_cli(main)
