"""Embedding speed: a trained encoder (a distilled student, or any encoder run) against SevenNet-0,
its teacher, on every structure of the run's subset, in one process with the passes interleaved, so a
busy machine slows both alike. The encoder embeds as the training script's latents do (EVAL_BATCH_SIZE
per pass), SevenNet-0 as the export does (PRETRAINED_BATCH_SIZE per pass, here in this one process).
Checks that each pass gives the latents its run wrote; prints structures/s and the ratio, by wall
time and by this process's CPU time (which other jobs on a shared machine disturb less).

    python benchmarks/bench_student.py --run runs/student --export runs/7net --repeats 1
"""
import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the package modules live in the repo root

import data  # noqa: E402
import pretrained  # noqa: E402
import training  # noqa: E402
from cli import run_cli, run_metadata, saved_config  # noqa: E402
from latents import latents_name, load_latents  # noqa: E402
from utils import get_device, write_text  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, required=True, help="a finished train_encoder_qm9.py run folder")
    parser.add_argument("--export", type=Path, required=True,
                        help="the SevenNet-0 export of the same structures (export_pretrained_latents.py)")
    parser.add_argument("--repeats", type=int, default=1, help="passes of each, interleaved")
    parser.add_argument("--device", help="cpu, cuda, ... (default: cuda if present)")
    parser.add_argument("--out", type=Path, help="also write the rates and differences here (JSON)")
    return parser.parse_args(argv)


def sevennet_pass(embedder, structures, cfg):
    """The export's passes over every structure, in one process: (M, 640)."""
    rows = torch.arange(structures.num_molecules, device=structures.z.device)
    return torch.cat([embedder(*structures.gather(chunk)[:3], len(chunk), structures.cells_of(chunk))[0]
                      for chunk in structures.batches(rows, cfg.PRETRAINED_BATCH_SIZE, cfg.BATCH_MAX_ATOMS)])


def main(argv=None):
    args = parse_args(argv)
    device = get_device(args.device)
    torch.set_flush_denormal(True)  # as both scripts do
    cfg = saved_config(args.run)
    arrays, cfg, _ = data.load_structures(cfg)
    structures = data.Structures(arrays, cfg.ATOM_TYPES, device)
    written = {"encoder": load_latents(args.run / latents_name(cfg.DATASET))["z_all"],
               "sevennet-0": load_latents(args.export / latents_name(cfg.DATASET))["z_all"]}
    encoder = training.load_encoder(args.run / training.BEST_ENCODER, device)
    embedder = pretrained.load_embedder("sevennet-0", cfg.PRETRAINED_READOUT, device)
    passes = {"encoder": lambda: training.extract_latents(encoder, structures, cfg.EVAL_BATCH_SIZE,
                                                          cfg.BATCH_MAX_ATOMS),
              "sevennet-0": lambda: sevennet_pass(embedder, structures, cfg).cpu().numpy()}
    latents, seconds, cpu_seconds = {}, {name: [] for name in passes}, {name: [] for name in passes}
    for _ in range(args.repeats):
        for name, run in passes.items():
            start, cpu_start = time.perf_counter(), time.process_time()
            latents[name] = run()  # numpy: on the host, so a GPU has finished
            seconds[name].append(time.perf_counter() - start)
            cpu_seconds[name].append(time.process_time() - cpu_start)
    rates = {name: structures.num_molecules / np.median(times) for name, times in seconds.items()}
    cpu_rates = {name: structures.num_molecules / np.median(times) for name, times in cpu_seconds.items()}
    # against the npz each run wrote: the same latents, up to the rounding of another thread count
    differences = {name: float(np.abs(latents[name] - written[name]).max() / np.abs(written[name]).max())
                   for name in passes}
    print(f"{'latent':<12} {'structures/s':>13} {'vs sevennet-0':>14} {'per CPU s':>10} {'vs sevennet-0':>14} "
          f"{'max diff':>9}  ({structures.num_molecules} structures, {args.repeats} repeats, {device}, "
          f"{torch.get_num_threads()} threads)")
    for name, rate in rates.items():
        print(f"{name:<12} {rate:13.1f} {rate / rates['sevennet-0']:14.1f} {cpu_rates[name]:10.1f} "
              f"{cpu_rates[name] / cpu_rates['sevennet-0']:14.1f} {differences[name]:9.1e}")
    if args.out:
        write_text(args.out, json.dumps({"run": {**run_metadata(), "device": str(device), "threads":
                                                 torch.get_num_threads(), "structures": structures.num_molecules,
                                                 "repeats": args.repeats, "encoder_run": str(args.run),
                                                 "export": str(args.export)},
                                         "structures_per_s": rates, "seconds": seconds,
                                         "structures_per_cpu_s": cpu_rates, "cpu_seconds": cpu_seconds,
                                         "max_relative_difference": differences}, indent=2))
    return rates, differences


if __name__ == "__main__":
    run_cli(main)
