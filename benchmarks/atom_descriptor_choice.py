"""Which per-atom target: dscribe SOAP or ACSF, and how large. For each candidate, on a seeded subset
of QM9: the time to build every atom's descriptor, its width, and the validation MAE of kernel ridge
regression (heads.krr_fit) of HOMO on the atom-averaged descriptor, standardized per column with
training-split statistics as the targets are, at N = 100 and 1000 labels drawn at random from the
training split (mean and std over seeds). Prints a markdown table.

    python benchmarks/atom_descriptor_choice.py --data-root /work/main/data --molecules 2000
"""
import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the package modules live in the repo root

import atom_targets  # noqa: E402
import data  # noqa: E402
import heads  # noqa: E402
from cli import resolve_config, run_cli  # noqa: E402
from utils import standardize, std_floor, train_val_test_split_indices  # noqa: E402

CANDIDATES = {  # name -> (settings, SOAP compression)
    "soap n3 l2": ({"ATOM_DESCRIPTOR": "soap", "SOAP_N_MAX": 3, "SOAP_L_MAX": 2}, "crossover"),
    "soap n4 l3": ({"ATOM_DESCRIPTOR": "soap", "SOAP_N_MAX": 4, "SOAP_L_MAX": 3}, "crossover"),
    "soap n6 l4": ({"ATOM_DESCRIPTOR": "soap", "SOAP_N_MAX": 6, "SOAP_L_MAX": 4}, "crossover"),
    "soap n4 l3, all species pairs": ({"ATOM_DESCRIPTOR": "soap", "SOAP_N_MAX": 4, "SOAP_L_MAX": 3}, "off"),
    "acsf, cutoff 4": ({"ATOM_DESCRIPTOR": "acsf", "ATOM_DESCRIPTOR_CUTOFF": 4.0}, "crossover"),
    "acsf, cutoff 5": ({"ATOM_DESCRIPTOR": "acsf", "ATOM_DESCRIPTOR_CUTOFF": 5.0}, "crossover"),
    "acsf, cutoff 6": ({"ATOM_DESCRIPTOR": "acsf", "ATOM_DESCRIPTOR_CUTOFF": 6.0}, "crossover"),
}


def krr_val_mae(x, y, train_rows, val_rows, n, seeds, cfg):
    """Validation MAE (meV) of KRR on n random training rows, one per seed."""
    maes = []
    for seed in seeds:
        chosen = np.random.default_rng(seed).choice(train_rows, n, replace=False)
        mean, std = y[chosen].mean(), y[chosen].std()
        model = heads.krr_fit(x[chosen], (y[chosen] - mean) / std, x[val_rows], (y[val_rows] - mean) / std,
                              cfg.KRR_WIDTHS, cfg.KRR_RIDGES)
        maes.append(model["val_mae"] * float(std) * 1000)
    return np.mean(maes), np.std(maes)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", required=True)
    parser.add_argument("--molecules", type=int, default=2000)
    parser.add_argument("--seeds", type=int, default=5)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    base = {"DATA_ROOT": args.data_root, "MAX_STRUCTURES": args.molecules}
    arrays, cfg, _ = data.load_structures(resolve_config(base))
    train_rows, val_rows, _ = train_val_test_split_indices(len(arrays["n_atoms"]), cfg.TRAIN_VAL_TEST_SPLIT, cfg.SEED)
    y = torch.as_tensor(arrays["y"])
    molecule = torch.as_tensor(np.repeat(np.arange(len(arrays["n_atoms"])), arrays["n_atoms"]))
    print(f"{args.molecules} QM9 molecules ({len(arrays['z'])} atoms), train {len(train_rows)}, val {len(val_rows)}; "
          f"KRR val MAE of HOMO in meV, mean ± std over {args.seeds} seeds\n")
    print("| descriptor | width | build (s) | atoms/s | N = 100 | N = 1000 |\n|---|---:|---:|---:|---:|---:|")
    for name, (settings, compression) in CANDIDATES.items():
        candidate = resolve_config({**base, **settings, "ATOM_TYPES": cfg.ATOM_TYPES})
        atom_targets.SOAP_COMPRESSION = compression
        atom_targets.build_atom_descriptors(data.take_structures(arrays, np.arange(10)), candidate)  # numba compiles
        start = time.perf_counter()
        values = torch.as_tensor(atom_targets.build_atom_descriptors(arrays, candidate))
        seconds = time.perf_counter() - start
        x = torch.zeros(len(arrays["n_atoms"]), values.shape[1]).index_add_(0, molecule, values)
        x = x / torch.as_tensor(arrays["n_atoms"])[:, None]
        x = standardize(x, train_rows, min_std=std_floor(x[train_rows].std(dim=0)))[0]
        cells = [krr_val_mae(x, y, train_rows, val_rows, n, range(args.seeds), cfg) for n in (100, 1000)]
        print(f"| {name} | {values.shape[1]} | {seconds:.1f} | {len(values) / seconds:.0f} | "
              + " | ".join(f"{m:.0f} ± {s:.0f}" for m, s in cells) + " |", flush=True)


if __name__ == "__main__":
    run_cli(main)
