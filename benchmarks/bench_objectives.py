"""What each self-supervised objective costs: encoder training steps (training.train_epoch)
for the ablation's variants on the same molecules, timed in one process with the repeats
interleaved, so that a busy machine slows every variant alike. Prints mol/s per variant and its
ratio to the design card's objective.

    python benchmarks/bench_objectives.py --molecules 2000 --repeats 3
"""
import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the package modules live in the repo root

import training  # noqa: E402
from cli import resolve_config, run_cli  # noqa: E402
from utils import get_device, set_seed  # noqa: E402

ANGLES = {"DESCRIPTOR_WEIGHTS": {"atom_counts": 1.0, "distance_hist": 1.0, "pair_hist": 1.0, "angle_hist": 1.0}}
VARIANTS = {"base": {"LATENT_READOUT": "last"}, "readout": {}, "angles": {"LATENT_READOUT": "last", **ANGLES},
            "denoise": {"LATENT_READOUT": "last", "DENOISE_WEIGHT": 1.0},
            "all": {**ANGLES, "DENOISE_WEIGHT": 1.0}}  # readout: LATENT_READOUT="all", the default


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--molecules", type=int, default=2000, help="seeded QM9 subset; 80%% of it trains")
    parser.add_argument("--repeats", type=int, default=3, help="epochs timed per variant, interleaved")
    parser.add_argument("--data-root", help="override DATA_ROOT (where the QM9 cache lives)")
    parser.add_argument("--device", help="cpu, cuda, ... (default: cuda if present)")
    return parser.parse_args(argv)


def variant_epoch(overrides, args, device):
    """A function that trains one epoch of this variant's models on the subset (--molecules 0: every
    molecule); its molecule count."""
    cfg = resolve_config({**overrides, "MAX_STRUCTURES": args.molecules or None,
                          **({"DATA_ROOT": args.data_root} if args.data_root else {})})
    prepared = training.prepare_data(cfg, device)
    cfg = prepared.cfg
    set_seed(cfg.SEED)
    hparams = (training.encoder_hparams(cfg, avg_num_neighbors=15.0, periodic=False),
               training.decoder_hparams(cfg, prepared.targets.shape[1]))
    model, optimizer, _, _, _ = training.build_models(cfg, *hparams, device, checkpoint=None)
    rows = torch.as_tensor(prepared.split[0], device=device)
    draws = training.epoch_draws(prepared.structures, cfg, training.TRAIN_NOISE)
    return lambda: training.train_epoch(model, optimizer, prepared.structures, prepared.targets, rows, cfg, draws), \
        len(rows)


def main(argv=None):
    args = parse_args(argv)
    device = get_device(args.device)
    torch.set_flush_denormal(True)  # as the training script does
    epochs = {name: variant_epoch(overrides, args, device) for name, overrides in VARIANTS.items()}
    seconds = {name: [] for name in VARIANTS}
    for _ in range(args.repeats):
        for name, (epoch, _) in epochs.items():
            start = time.perf_counter()
            epoch()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            seconds[name].append(time.perf_counter() - start)
    base = epochs["base"][1] / np.median(seconds["base"])
    print(f"{'variant':<10} {'mol/s':>8} {'vs base':>8}  ({args.molecules} molecules, {args.repeats} epochs each, "
          f"{device}, {torch.get_num_threads()} threads)")
    rates = {name: count / np.median(seconds[name]) for name, (_, count) in epochs.items()}
    for name, rate in rates.items():
        print(f"{name:<10} {rate:8.0f} {rate / base:8.2f}")
    return rates


if __name__ == "__main__":
    run_cli(main)
