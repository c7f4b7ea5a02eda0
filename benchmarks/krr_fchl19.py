"""A classical reference line: kernel ridge regression on FCHL19 atomic environments, trained on the
molecules that random selection labels in sampling_mlp_experiment.py.

For every seed and budget N of the config, the labelled molecules are the sampling script's random
picks from the training pool of a latents npz (selection.random_selection, nested: the first N of
one run to the largest N). Their HOMO energies minus their mean are fitted by kernel ridge
regression with a local Gaussian kernel over FCHL19 environments (qmllib's representation); the
kernel width and the ridge are chosen per (N, seed) on the sampling script's validation subset, and
the test split scores it. results_all.csv and summary.csv have the sampling script's format (head
"fchl19_krr", strategy "random"), so `sampling_mlp_experiment.py --reference` reads the summary.

    pip install qmllib
    python benchmarks/krr_fchl19.py --latents runs/full/latents_qm9.npz --out-dir runs/full/fchl19_krr

The molecules come from the QM9 cache (DATA_ROOT), matched by the npz's structure_index (QM9 Index). The kernel
between molecules i and j is sum_{I in i, J in j, same element} exp(-|x_I - x_J|^2 / (2 sigma^2)),
that of qmllib.kernels.get_local_kernel (the tests check that they agree). It is computed here with
one matrix product per element and block: qmllib's loop reads every feature with a stride of the
whole batch and took 520 us per molecule pair on one thread of a 2-core AMD EPYC, against 5-7 us
this way.
"""
import argparse
import importlib.metadata
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the package modules live in the repo root

import data  # noqa: E402
import qm9  # noqa: E402
import selection  # noqa: E402
from cli import (add_run_arguments, default_run_dir, overrides_from_args, resolve_config, run_cli,  # noqa: E402
                 run_folder, start_run)
from evaluation import check_plan, regression_metrics, summarize  # noqa: E402
from latents import load_latents  # noqa: E402
from utils import InputError, get_device, write_csv  # noqa: E402

HEAD = "fchl19_krr"
ELEMENTS = (1, 6, 7, 8, 9)  # QM9's H, C, N, O and F: every molecule's features share one layout
# Grids: on the full QM9 split, 2 seeds of a wider probe (widths 0.25-64, ridges 1e-8-10) chose widths 0.25-32 and
# every ridge from 1e-8 to 10. A width costs an exponential per atom pair; a ridge costs nothing (one eigh per width).
SIGMAS = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0)  # kernel widths; qmllib suggests about 21 for FCHL19
RIDGES = (1e-8, 1e-7, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0)  # qmllib suggests 1e-8; K sums ~100 atom pairs
BLOCK = 32  # molecules per kernel block: distance blocks of tens of MB, which reuse memory (measured twice as
#              fast as 128, whose blocks of hundreds of MB are mapped afresh each time)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--latents", type=Path, required=True, help="latents_qm9.npz: its split, labels and structure_index")
    parser.add_argument("--data-root", help="override DATA_ROOT (where the QM9 cache lives)")
    add_run_arguments(parser)
    return parser.parse_args(argv)


def fchl19():
    """qmllib's FCHL19 representation, or a one-line error: the package itself does not need qmllib."""
    try:
        from qmllib.representations import generate_fchl19
    except ImportError:
        raise InputError("this benchmark needs qmllib, which is not installed: pip install qmllib") from None
    return generate_fchl19


# --- molecules and rows ----------------------------------------------------------------

def validation_rows(arrays, cfg):
    """The npz rows of the sampling script's early-stopping subset of idx_val (experiment_inputs)."""
    rows = arrays["idx_val"]
    if cfg.MLP_VAL_SIZE is not None and cfg.MLP_VAL_SIZE < len(rows):
        rows = np.random.default_rng(cfg.SEED).choice(rows, cfg.MLP_VAL_SIZE, replace=False)
    return rows


def random_picks(pool_size, n_max, seed):
    """The sampling script's random picks (pool rows, pick order) for the largest budget: random
    selection looks only at the number of pool rows, so a placeholder stands for the latents."""
    return selection.random_selection(torch.zeros(pool_size, 1), n_max, seed).numpy()


def cache_rows(cache, qm9_index):
    """Positions in the QM9 cache of the molecules with these QM9 Index values, or an InputError."""
    order = np.argsort(cache["index"])
    position = order[np.searchsorted(cache["index"], qm9_index, sorter=order).clip(max=len(order) - 1)]
    missing = cache["index"][position] != qm9_index
    if missing.any():
        raise InputError(f"the QM9 cache lacks {int(missing.sum())} molecules of the npz, e.g. QM9 Index "
                         f"{qm9_index[missing][:5].tolist()}; was the npz made from another dataset?")
    return position


# --- FCHL19 environments and the local kernel ----------------------------------------------

def environments(cache, rows, device):
    """FCHL19 features of the atoms of cache molecules `rows`, by element: ({Z: (x (atoms, D) float64,
    molecule (atoms,) position in rows, ascending)}, number of molecules)."""
    generate = fchl19()
    molecules = data.take_structures(cache, rows)
    z = molecules["z"].astype(np.int64)
    first = np.cumsum(molecules["n_atoms"]) - molecules["n_atoms"]
    x = np.concatenate([generate(z[a:a + n], molecules["pos"][a:a + n].astype(np.float64), elements=list(ELEMENTS))
                        for a, n in zip(first, molecules["n_atoms"])])
    molecule = np.repeat(np.arange(len(rows)), molecules["n_atoms"])
    by_element = {e: (torch.as_tensor(x[z == e], device=device), torch.as_tensor(molecule[z == e], device=device))
                  for e in ELEMENTS}
    return by_element, len(rows)


def local_kernels(a, b, sigmas):
    """(len(sigmas), molecules of a, molecules of b): for each width, the sum over every pair of
    atoms of one element, one atom of each molecule, of exp(-|x_I - x_J|^2 / (2 sigma^2))."""
    (atoms_a, n_a), (atoms_b, n_b) = a, b
    device = next(iter(atoms_a.values()))[0].device
    kernel = torch.zeros(len(sigmas), n_a, n_b, dtype=torch.float64, device=device)
    for element in ELEMENTS:
        (x_a, molecule_a), (x_b, molecule_b) = atoms_a[element], atoms_b[element]
        if not len(x_a) or not len(x_b):
            continue
        norms_b = selection.squared_norms(x_b)
        for start in range(0, n_a, BLOCK):  # a block's atoms are contiguous: molecule_a ascends
            stop = min(start + BLOCK, n_a)
            low, high = torch.searchsorted(molecule_a, torch.tensor([start, stop], device=device)).tolist()
            squared = selection.squared_distances(x_a[low:high], x_b, b_norms=norms_b)
            for s, sigma in enumerate(sigmas):
                pair_terms = torch.exp(squared * (-0.5 / sigma**2))  # (atoms of the block, atoms of b)
                by_molecule_a = torch.zeros(stop - start, len(x_b), dtype=torch.float64, device=device)
                by_molecule_a.index_add_(0, molecule_a[low:high] - start, pair_terms)
                kernel[s, start:stop].index_add_(1, molecule_b, by_molecule_a)
    return kernel


# --- kernel ridge regression ---------------------------------------------------------------------

def fit_krr(k_train, k_val, y, y_val):
    """Kernel ridge regression of y (N,) on k_train (S, N, N), one kernel per width of SIGMAS[:S];
    the (width, ridge) pair of lowest MAE on y_val (V,) from k_val (S, V, N). One eigendecomposition
    per width serves every ridge. Returns {sigma, ridge, alpha (N,), val_mae}."""
    best = {"val_mae": float("inf")}
    for s in range(len(k_train)):
        eigenvalues, eigenvectors = torch.linalg.eigh(k_train[s])
        eigenvalues = eigenvalues.clamp(min=0)  # K is positive semi-definite; rounding may make some slightly negative
        projected = eigenvectors.T @ y
        val_basis = k_val[s] @ eigenvectors
        for ridge in RIDGES:
            coefficients = projected / (eigenvalues + ridge)
            val_mae = float((val_basis @ coefficients - y_val).abs().mean())
            if val_mae < best["val_mae"]:
                best = {"sigma": SIGMAS[s], "ridge": ridge, "alpha": eigenvectors @ coefficients, "val_mae": val_mae}
    return best


def run_seed(seed, ns, arrays, cache_of_row, val, test, cache, device, logger):
    """Result rows of one seed for every budget: the kernels of its picks for the largest N serve
    each smaller N (their first N rows). fit_seconds is the time of one N's fit and test
    prediction from those kernels; the kernels' time goes to the log."""
    y_all = torch.as_tensor(arrays["y_all"], dtype=torch.float64, device=device)
    picks = arrays["idx_train"][random_picks(len(arrays["idx_train"]), ns[-1], seed)]
    clock = time.perf_counter()
    train = environments(cache, cache_of_row[picks], device)
    k_train = local_kernels(train, train, SIGMAS)
    k_val = local_kernels(val["environments"], train, SIGMAS)
    logger.info("seed %d: features of its picks, train and validation kernels in %.1f s", seed,
                time.perf_counter() - clock)
    fits = {}
    for n in ns:
        start = time.perf_counter()
        y = y_all[picks[:n]]
        fits[n] = fit_krr(k_train[:, :n, :n], k_val[:, :, :n], y - y.mean(), val["y"] - y.mean())
        fits[n].update(mean=y.mean(), seconds=time.perf_counter() - start)
    clock = time.perf_counter()
    chosen = sorted({fit["sigma"] for fit in fits.values()})
    k_test = dict(zip(chosen, local_kernels(test["environments"], train, chosen)))  # only the widths in use
    logger.info("seed %d: test kernel (%d x %d, widths %s) in %.1f s", seed, len(test["y"]), ns[-1], chosen,
                time.perf_counter() - clock)
    rows = []
    for n, fit in fits.items():
        start = time.perf_counter()
        prediction = (fit["mean"] + k_test[fit["sigma"]][:, :n] @ fit["alpha"]).cpu().numpy()
        metrics = regression_metrics(test["y"].cpu().numpy(), prediction)
        rows.append({"head": HEAD, "strategy": "random", "n_labels": n, "seed": seed, **metrics,
                     "fit_seconds": fit["seconds"] + time.perf_counter() - start, "val_mae": fit["val_mae"],
                     "fchl_sigma": fit["sigma"], "fchl_ridge": fit["ridge"]})
        logger.info("%s N=%5d seed %d: test MAE %.4f eV RMSE %.4f R2 %.3f p95 %.4f max %.3f; val MAE %.4f, "
                    "sigma %g, ridge %g", HEAD, n, seed, metrics["mae"], metrics["rmse"], metrics["r2"],
                    metrics["p95_abs_error"], metrics["max_abs_error"], fit["val_mae"], fit["sigma"], fit["ridge"])
    return rows


def held_out(arrays, rows, cache_of_row, cache, device):
    """Environments and labels (eV) of npz rows that every seed scores against."""
    return {"environments": environments(cache, cache_of_row[rows], device),
            "y": torch.as_tensor(arrays["y_all"][rows], dtype=torch.float64, device=device)}


def run_benchmark(cfg, arrays, ns, out_dir, device, logger):
    clock = time.perf_counter()
    cache = qm9.load_qm9(cfg.DATA_ROOT)
    cache_of_row = cache_rows(cache, arrays["structure_index"])
    val_rows = validation_rows(arrays, cfg)
    val = held_out(arrays, val_rows, cache_of_row, cache, device)
    test = held_out(arrays, arrays["idx_test"], cache_of_row, cache, device)
    logger.info("pool %d, validation %d, test %d; budgets %s, seeds %s; FCHL19 features of held-out molecules "
                "in %.1f s", len(arrays["idx_train"]), len(val_rows), len(arrays["idx_test"]), ns,
                cfg.SAMPLING_SEEDS, time.perf_counter() - clock)
    rows = []
    for seed in cfg.SAMPLING_SEEDS:
        rows += run_seed(seed, ns, arrays, cache_of_row, val, test, cache, device, logger)
    results = pd.DataFrame(rows)
    summary = summarize(results)
    write_csv(results, out_dir / "results_all.csv")
    write_csv(summary, out_dir / "summary.csv")
    logger.info("summary (eV):\n%s", summary.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    logger.info("wrote results to %s; total %.1f s", out_dir, time.perf_counter() - clock)


def main(argv=None):
    args = parse_args(argv)
    fchl19()  # a missing qmllib stops the run before anything is read or made
    cfg = resolve_config(overrides_from_args({"DATA_ROOT": args.data_root}, args.set))
    arrays = load_latents(args.latents)
    if arrays["dataset"] != "qm9" or "structure_index" not in arrays:
        raise InputError(f"{args.latents}: expected QM9 latents with a structure_index (QM9 Index), which names the "
                         f"molecules in the QM9 cache; got dataset {arrays['dataset']}")
    ns = check_plan(cfg, len(arrays["idx_train"]))
    device = get_device(args.device)
    out_dir = args.out_dir or default_run_dir(cfg, HEAD)
    with run_folder(out_dir):
        logger = start_run(cfg, out_dir, HEAD, "krr_fchl19.log", latents=str(args.latents),
                           sigmas=SIGMAS, ridges=RIDGES, qmllib=importlib.metadata.version("qmllib"))
        run_benchmark(cfg, arrays, ns, out_dir, device, logger)


if __name__ == "__main__":
    run_cli(main)
