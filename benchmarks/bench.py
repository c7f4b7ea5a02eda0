"""Times each hot path of the package against a plain baseline (benchmarks/baselines.py) in one
process on the same data, checks that the two agree, and prints one table:
path, baseline, fast, ratio (how many times faster the fast path is), agreement, device.

    python benchmarks/bench.py --quick                       # small sizes, under 2 minutes on 2 CPU cores
    python benchmarks/bench.py --out runs/bench.json         # realistic sizes; also the raw numbers as JSON
    python benchmarks/bench.py --latents runs/full/latents_qm9.npz   # real latents for the sampling grid

Rows: encoder training, its neighbour gather, and latent extraction (molecules/s), descriptor targets (molecules/s),
k-center greedy (s) and the label-budget grid of property heads (s).
"""
import argparse
import json
import math
import os
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from e3nn import o3
from threadpoolctl import threadpool_limits
from torch_geometric.data import Batch
from torch_geometric.loader import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the package modules live in the repo root

import baselines  # noqa: E402
import data  # noqa: E402
import descriptors  # noqa: E402
import heads  # noqa: E402
import latents  # noqa: E402
import qm9  # noqa: E402
import selection  # noqa: E402
import training  # noqa: E402
from cli import resolve_config, run_cli  # noqa: E402
from models import EquivDecoder, EquivGNNEncoder  # noqa: E402
from utils import get_device, set_seed, standardize, write_text  # noqa: E402

LATENT_DIM = 128  # width of the synthetic latents for k-center and the sampling grid
QUICK_GRID = {"pool": 5_000, "val": 500, "test": 1_000, "ns": [10, 50, 200], "seeds": [0, 1], "epochs": 50}
FULL_GRID = {"pool": 104_000, "val": 2_000, "test": 13_000, "ns": [10, 20, 50, 100, 200, 500, 1000],
             "seeds": [0, 1, 2, 3, 4], "epochs": 200}
TARGETS = {"encoder training": 5.0, "k-center greedy": 3.0, "sampling grid": 5.0}  # wanted ratios on CPU
TOLERANCES = {"gather_loss": 1e-4, "latents": 1e-5, "descriptors": 1e-5, "invariance": 1e-4, "heads_float64": 1e-9}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes: the whole run in under 2 minutes")
    parser.add_argument("--device", help="torch device (default: cuda if available, else cpu)")
    parser.add_argument("--out", type=Path, help="also write the table, raw numbers and checks here as JSON")
    parser.add_argument("--latents", type=Path, help="latents_qm9.npz for the sampling grid (default: synthetic)")
    parser.add_argument("--threads", type=int, help="CPU threads of torch and numpy (default: their own choice)")
    return parser.parse_args(argv)


def bench_sizes(quick, device):
    """Problem sizes of one run. Full mode on a CPU trains and encodes 12,800 molecules, not all of QM9."""
    if quick:
        return {"molecules": 1_536, "train_molecules": 640, "descriptor_molecules": 1_536,
                "kcenter_pool": 20_000, "kcenter_k": 200, "grid": QUICK_GRID, "repeats": 3}
    on_gpu = device.type == "cuda"
    return {"molecules": None if on_gpu else 12_800, "train_molecules": 19_200 if on_gpu else 12_800,
            "descriptor_molecules": 12_800, "kcenter_pool": 104_000, "kcenter_k": 1_000, "grid": FULL_GRID,
            "repeats": 3}


# --- timing ------------------------------------------------------------------------

def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device, repeats=1):
    """Median wall-clock seconds of `repeats` calls of fn() and the last call's result; queued CUDA
    work is finished before every clock read."""
    seconds = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        result = fn()
        synchronize(device)
        seconds.append(time.perf_counter() - start)
    return float(np.median(seconds)), result


def relative_difference(a, b):
    """max |a - b| / max |b| of two arrays or tensors, as a Python float."""
    a, b = (np.asarray(x.detach().cpu() if isinstance(x, torch.Tensor) else x, dtype=np.float64) for x in (a, b))
    return float(np.abs(a - b).max() / np.abs(b).max())


# --- QM9 molecules for the encoder rows --------------------------------------------

def qm9_setup(cfg, sizes, device):
    """Molecules, standardized descriptor targets (M, D) and their PyG Data list, shared by the encoder rows."""
    arrays = data.seeded_subset(qm9.load_qm9(cfg.DATA_ROOT), sizes["molecules"], cfg.SEED)
    structures = data.Structures(arrays, cfg.ATOM_TYPES, device)
    rows = torch.arange(structures.num_molecules, device=device)
    sizes = descriptors.descriptor_sizes(cfg)
    targets = descriptors.standardize_targets(descriptors.compute_descriptors(structures, cfg), rows, sizes)[0]
    start = time.perf_counter()
    molecules = baselines.molecule_data_list(arrays, targets.cpu(), cfg.CUTOFF)
    data_list_seconds = time.perf_counter() - start
    avg_neighbors = training.average_neighbors(structures, rows, cfg.CUTOFF, cfg.EVAL_BATCH_SIZE,
                                                cfg.BATCH_MAX_ATOMS)
    return SimpleNamespace(arrays=arrays, structures=structures, targets=targets, molecules=molecules,
                           enc_hparams=training.encoder_hparams(cfg, avg_neighbors, periodic=False),
                           dec_hparams=training.decoder_hparams(cfg, targets.shape[1]),
                           data_list_seconds=data_list_seconds)


def seeded_model(cls, hparams, seed, device):
    set_seed(seed)
    return cls(**hparams).to(device)


def invariance_error(encode, pos, seed):
    """Relative change of encode(pos) (B, latent_dim) under a random rotation and translation of pos (A, 3)."""
    with torch.random.fork_rng(devices=[]):  # the same motion for every encoder checked
        torch.manual_seed(seed)
        rotation = o3.rand_matrix().to(pos.device, pos.dtype)
        shift = torch.randn(3).to(pos.device, pos.dtype)
    with torch.no_grad():
        return relative_difference(encode(pos @ rotation.T + shift), encode(pos))


def bench_training(setup, cfg, sizes, device):
    """Encoder + decoder training steps: index-gathered batches and the channel-wise tensor product
    (training.train_epoch) against PyG DataLoader batches and a fully connected one."""
    rows = training.epoch_order(torch.arange(setup.structures.num_molecules, device=device), cfg.SEED, 0)
    rows = rows[:sizes["train_molecules"]]
    warm_rows = rows[:2 * cfg.ENC_BATCH_SIZE]
    subset = [setup.molecules[i] for i in rows.tolist()]
    loader = DataLoader(subset, batch_size=cfg.ENC_BATCH_SIZE, shuffle=True)
    warm_loader = DataLoader(subset[:len(warm_rows)], batch_size=cfg.ENC_BATCH_SIZE, shuffle=True)

    encoders = {"fast": seeded_model(EquivGNNEncoder, setup.enc_hparams, cfg.SEED, device),
                "baseline": seeded_model(baselines.FullTPEncoder, setup.enc_hparams, cfg.SEED, device)}
    decoders = {side: seeded_model(EquivDecoder, setup.dec_hparams, cfg.SEED, device) for side in encoders}
    optimizers = {side: training.make_optimizer(cfg, [*encoders[side].parameters(), *decoders[side].parameters()],
                                                device)[0] for side in encoders}
    models = {side: training.Autoencoder(encoders[side], decoders[side]) for side in encoders}

    def fast(train_rows):
        return training.train_epoch(models["fast"], optimizers["fast"], setup.structures, setup.targets,
                                    train_rows, cfg)

    def baseline(batches):
        return baselines.train_epoch_pyg(encoders["baseline"], decoders["baseline"], optimizers["baseline"],
                                         batches, cfg, device)

    fast(warm_rows)
    baseline(warm_loader)
    fast_seconds, fast_loss = timed(lambda: fast(rows), device)
    base_seconds, base_loss = timed(lambda: baseline(loader), device)

    check = rows[:cfg.ENC_BATCH_SIZE].cpu()
    z, pos, batch, _ = setup.structures.gather(check.to(device))
    graph = Batch.from_data_list([setup.molecules[i] for i in check.tolist()]).to(device)
    encoders["fast"].eval()
    encoders["baseline"].eval()
    errors = {"fast": invariance_error(lambda p: encoders["fast"](z, p, batch), pos, cfg.SEED),
              "baseline": invariance_error(lambda p: encoders["baseline"].encode_graph(
                  graph.z, p, graph.edge_index, graph.batch), graph.pos, cfg.SEED)}
    ok = max(errors.values()) < TOLERANCES["invariance"]
    n = len(rows)
    return {
        "path": "encoder training", "size": f"{n:,} mol", "unit": "mol/s", "baseline": n / base_seconds,
        "fast": n / fast_seconds,
        "agreement": f"different parametrisation; {'both invariant' if ok else 'NOT invariant'} (rotated: "
                     f"{errors['baseline']:.0e} baseline, {errors['fast']:.0e} fast)",
        "raw": {"molecules": n, "baseline_seconds": base_seconds, "fast_seconds": fast_seconds,
                "baseline_loss": float(base_loss), "fast_loss": float(fast_loss),
                "baseline_parameters": sum(p.numel() for p in encoders["baseline"].parameters()),
                "fast_parameters": sum(p.numel() for p in encoders["fast"].parameters()),
                "data_list_seconds": setup.data_list_seconds},
        "check": {"invariance_error_fast": errors["fast"], "invariance_error_baseline": errors["baseline"],
                  "ok": ok},
    }


def bench_gather(setup, cfg, sizes, device):
    """training.train_epoch with index_select gathers (bit-for-bit repeatable on the CPU)
    against the same encoder, same weights, gathering with h[source]; repeats alternate the two."""
    rows = training.epoch_order(torch.arange(setup.structures.num_molecules, device=device), cfg.SEED, 0)
    rows = rows[:sizes["train_molecules"]]
    seconds, losses = {"baseline": [], "fast": []}, {}
    for repeat in range(sizes["repeats"]):
        for side in ("baseline", "fast"):
            encoder = seeded_model(EquivGNNEncoder, setup.enc_hparams, cfg.SEED, device)
            encoder = baselines.with_index_gather(encoder) if side == "baseline" else encoder
            decoder = seeded_model(EquivDecoder, setup.dec_hparams, cfg.SEED, device)
            optimizer = training.make_optimizer(cfg, [*encoder.parameters(), *decoder.parameters()], device)[0]
            model = training.Autoencoder(encoder, decoder)
            elapsed, loss = timed(lambda: training.train_epoch(model, optimizer, setup.structures, setup.targets,
                                                               rows, cfg), device)
            seconds[side].append(elapsed)
            losses[side] = float(loss)
    difference = abs(losses["fast"] - losses["baseline"]) / abs(losses["baseline"])
    n, median = len(rows), {side: float(np.median(times)) for side, times in seconds.items()}
    return {
        "path": "gather for backward", "size": f"{n:,} mol", "unit": "mol/s", "baseline": n / median["baseline"],
        "fast": n / median["fast"], "agreement": f"epoch loss within {difference:.0e} (rounding order only)",
        "raw": {"molecules": n, "seconds": seconds, "losses": losses},
        "check": {"loss_relative_difference": difference, "ok": difference < TOLERANCES["gather_loss"]},
    }


def bench_latents(setup, cfg, sizes, device):
    """extract_latents on device-resident structures against the same encoder fed by the PyG DataLoader."""
    encoder = seeded_model(EquivGNNEncoder, setup.enc_hparams, cfg.SEED, device)
    warm = data.Structures(data.take_structures(setup.arrays, np.arange(128)), cfg.ATOM_TYPES, device)
    training.extract_latents(encoder, warm, cfg.EVAL_BATCH_SIZE, cfg.BATCH_MAX_ATOMS)
    baselines.latents_pyg(encoder, DataLoader(setup.molecules[:128], batch_size=cfg.EVAL_BATCH_SIZE), device)

    loader = DataLoader(setup.molecules, batch_size=cfg.EVAL_BATCH_SIZE)
    fast_seconds, fast = timed(
        lambda: training.extract_latents(encoder, setup.structures, cfg.EVAL_BATCH_SIZE, cfg.BATCH_MAX_ATOMS),
        device, sizes["repeats"])
    base_seconds, base = timed(lambda: baselines.latents_pyg(encoder, loader, device), device, sizes["repeats"])
    difference = relative_difference(fast, base)
    ok = difference < TOLERANCES["latents"]
    n = setup.structures.num_molecules
    return {
        "path": "latent extraction", "size": f"{n:,} mol", "unit": "mol/s", "baseline": n / base_seconds,
        "fast": n / fast_seconds,
        "agreement": f"same weights; max|diff|/max = {difference:.1e} {'ok' if ok else 'FAIL'}",
        "raw": {"molecules": n, "batch_size": cfg.EVAL_BATCH_SIZE, "baseline_seconds": base_seconds,
                "fast_seconds": fast_seconds},
        "check": {"relative_difference": difference, "ok": ok},
    }


def bench_descriptors(setup, cfg, sizes, device):
    """compute_descriptors in EVAL_BATCH_SIZE chunks against the same function one molecule at a time."""
    n = min(sizes["descriptor_molecules"], setup.structures.num_molecules)
    structures = data.Structures(data.take_structures(setup.arrays, np.arange(n)), cfg.ATOM_TYPES, device)
    descriptors.compute_descriptors(structures, cfg)
    fast_seconds, fast = timed(lambda: descriptors.compute_descriptors(structures, cfg), device, sizes["repeats"])
    base_seconds, base = timed(lambda: baselines.descriptors_per_molecule(structures, cfg), device,
                               sizes["repeats"])
    difference = relative_difference(fast, base)
    ok = difference < TOLERANCES["descriptors"]
    return {
        "path": "descriptor targets", "size": f"{n:,} mol", "unit": "mol/s", "baseline": n / base_seconds,
        "fast": n / fast_seconds,
        "agreement": f"max|diff|/max = {difference:.1e} {'ok' if ok else 'FAIL'}",
        "raw": {"molecules": n, "baseline_seconds": base_seconds, "fast_seconds": fast_seconds},
        "check": {"relative_difference": difference, "ok": ok},
    }


# --- k-center ----------------------------------------------------------------------

def near_tie(features, picks_a, picks_b, position):
    """At the first differing pick: both candidates' float64 distance to the earlier centres, and
    their gap relative to the larger one (a gap below float32 resolution is a rounding tie)."""
    exact = features.astype(np.float64)
    centres = exact[picks_a[:position]]
    distance = {int(c): float(np.sqrt(((exact[c] - centres) ** 2).sum(axis=1)).min())
                for c in (picks_a[position], picks_b[position])}
    values = list(distance.values())
    return {"float64_distances": distance, "relative_gap": abs(values[0] - values[1]) / max(values)}


def pick_agreement(fast, base, features):
    """How far two k-center orders agree: same position, same set, first mismatch and its near-tie."""
    same = fast == base
    first = None if same.all() else int(np.flatnonzero(~same)[0])
    return {"same_position": int(same.sum()), "k": len(fast), "same_set": len(np.intersect1d(fast, base)),
            "first_mismatch": first, "tie": None if first is None else near_tie(features, fast, base, first),
            "ok": bool(same.all())}


def bench_kcenter(sizes, seed, device):
    """kcenter_greedy (torch) against the classic numpy/sklearn loop, from the same first centre."""
    n, k = sizes["kcenter_pool"], sizes["kcenter_k"]
    features = np.random.default_rng(seed).standard_normal((n, LATENT_DIM), dtype=np.float32)
    z = torch.as_tensor(features, device=device)
    first = int(torch.randint(n, (), generator=torch.Generator().manual_seed(seed)))  # as kcenter_greedy draws it
    selection.kcenter_greedy(z, 5, seed)
    baselines.kcenter_sklearn(features, 5, first)
    fast_seconds, fast = timed(lambda: selection.kcenter_greedy(z, k, seed), device, sizes["repeats"])
    base_seconds, base = timed(lambda: baselines.kcenter_sklearn(features, k, first), torch.device("cpu"),
                               sizes["repeats"])
    check = pick_agreement(fast.cpu().numpy(), base, features)
    text = f"{check['same_position']}/{k} picks identical"
    if not check["ok"]:
        gap = check["tie"]["relative_gap"]
        text += (f", same set {check['same_set']}/{k}, first mismatch at {check['first_mismatch']}: "
                 f"float64 gap {gap:.0e}{' < float32 eps, a tie' if gap < np.finfo(np.float32).eps else ''}")
    return {
        "path": "k-center greedy", "size": f"{n:,}x{LATENT_DIM}, k={k:,}", "unit": "s", "baseline": base_seconds,
        "fast": fast_seconds, "agreement": text,
        "raw": {"pool": n, "dim": LATENT_DIM, "k": k, "baseline_seconds": base_seconds,
                "fast_seconds": fast_seconds},
        "check": check, "device": f"{device.type} (baseline cpu numpy)" if device.type != "cpu" else "cpu",
    }


# --- sampling grid -----------------------------------------------------------------

def synthetic_latents(n, seed):
    """Latents z (n, LATENT_DIM) float32 standard normal and a property y (n,) float64 that depends
    on them nonlinearly, plus noise."""
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((n, LATENT_DIM), dtype=np.float32)
    w = rng.standard_normal((LATENT_DIM, 16)) / np.sqrt(LATENT_DIM)
    y = np.tanh(z @ w).sum(axis=1) + 0.5 * np.sin(z[:, 0] * z[:, 1]) + 0.1 * rng.standard_normal(n)
    return z, y


def grid_inputs(grid, latents_path, seed, device, dtype):
    """Pool, early-stopping and test sets as x (rows, d) and y (rows,) tensors on `device`;
    latents are standardized by the pool, as run_experiment does."""
    if latents_path is None:
        z, y = synthetic_latents(grid["pool"] + grid["val"] + grid["test"], seed)
        pool = np.arange(grid["pool"])
        val = np.arange(grid["pool"], grid["pool"] + grid["val"])
        test = np.arange(grid["pool"] + grid["val"], len(z))
    else:
        arrays = latents.load_latents(latents_path)
        z, y = arrays["z_all"], arrays["y_all"]
        pool, test = arrays["idx_train"][:grid["pool"]], arrays["idx_test"][:grid["test"]]
        val = np.random.default_rng(seed).choice(arrays["idx_val"], min(grid["val"], len(arrays["idx_val"])),
                                                 replace=False)
    z = torch.as_tensor(z, dtype=dtype, device=device)
    y = torch.as_tensor(y, dtype=dtype, device=device)
    x = standardize(z, torch.as_tensor(pool, device=device))[0]
    return {name: (x[rows], y[rows]) for name, rows in (("pool", pool), ("val", val), ("test", test))}


def head_steps(best_epochs, n_labels, cfg):
    """Training steps each head takes before early stopping ends it, from its best epoch."""
    batches = math.ceil(n_labels / cfg.MLP_BATCH_SIZE)
    return [min(epoch + cfg.MLP_PATIENCE, cfg.MLP_EPOCHS) * batches for epoch in best_epochs]


def run_grid(grid, inputs, selections, plan, cfg, device):
    """Every budget of the grid, batched and sequential: seconds and test predictions (H, T) of each, and
    the steps taken: one head at a time takes the sum of the heads' steps, the stack as many as the
    longest-running head."""
    seeds = [seed for _, seed in plan]
    x_val, x_test = inputs["val"][0], inputs["test"][0]
    per_budget = []
    for n_labels in grid["ns"]:
        chosen = torch.stack([selections[key][:n_labels] for key in plan])
        x, y, y_val, (mean, std) = heads.budget_inputs(chosen, inputs)
        fast_seconds, (params, fast_epochs, _, stack) = timed(
            lambda: heads.train_mlp_heads(x, y, x_val, y_val, seeds, cfg), device)
        base_seconds, (models, base_epochs) = timed(
            lambda: baselines.train_heads_sequential(x, y, x_val, y_val, seeds, cfg), device)
        with torch.no_grad():
            fast = mean + std * stack.shared(params, x_test)
            base = mean + std * torch.stack([model(x_test) for model in models])
        steps = head_steps(base_epochs, n_labels, cfg)
        per_budget.append({"n_labels": n_labels, "fast_seconds": fast_seconds, "baseline_seconds": base_seconds,
                           "head_steps": sum(steps), "stack_steps": max(steps), "fast": fast, "baseline": base,
                           "y_test": inputs["test"][1], "fast_epochs": fast_epochs.tolist(),
                           "baseline_epochs": base_epochs})
    return per_budget


def grid_agreement(per_budget):
    """Batched against sequential heads over the grid: predictions, test MAE and best epochs."""
    prediction, mae, epochs, heads = 0.0, 0.0, 0, 0
    for budget in per_budget:
        prediction = max(prediction, relative_difference(budget["fast"], budget["baseline"]))
        fast_mae = (budget["fast"] - budget["y_test"]).abs().mean(dim=1)
        base_mae = (budget["baseline"] - budget["y_test"]).abs().mean(dim=1)
        mae = max(mae, float(((fast_mae - base_mae).abs() / base_mae).max()))
        epochs += sum(a == b for a, b in zip(budget["fast_epochs"], budget["baseline_epochs"]))
        heads += len(budget["baseline_epochs"])
    return {"prediction_relative_difference": prediction, "test_mae_relative_difference": mae,
            "same_best_epoch": epochs, "heads": heads}


def grid_run(grid, latents_path, seed, device, dtype):
    """Selections (random and k-center, the same for both sides) and the timed grid in `dtype`."""
    cfg = resolve_config({"MLP_EPOCHS": grid["epochs"]})
    inputs = grid_inputs(grid, latents_path, seed, device, dtype)
    plan = [(strategy, s) for strategy in ("random", "kcenter") for s in grid["seeds"]]
    select = selection.Selector(inputs["pool"][0], resolve_config())
    selections = {(strategy, s): select(strategy, max(grid["ns"]), s) for strategy, s in plan}
    warm = resolve_config({"MLP_EPOCHS": 2})
    run_grid({"ns": grid["ns"][:1]}, inputs, selections, plan, warm, device)
    per_budget = run_grid(grid, inputs, selections, plan, cfg, device)
    return per_budget, grid_agreement(per_budget), len(plan)


def bench_grid(sizes, latents_path, seed, device):
    """train_mlp_heads (all heads of a budget at once) against train_mlp one head at a time. Timed in
    float32; batched and sequential matmuls round differently there, so the agreement is also
    checked in float64 on the quick grid, where the two must match to rounding."""
    grid = sizes["grid"]
    per_budget, check32, num_heads = grid_run(grid, latents_path, seed, device, torch.float32)
    _, check64, _ = grid_run(QUICK_GRID, latents_path, seed, device, torch.float64)
    check64["ok"] = check64["prediction_relative_difference"] < TOLERANCES["heads_float64"] \
        and check64["same_best_epoch"] == check64["heads"]
    text = (f"float32: pred. rel. diff {check32['prediction_relative_difference']:.1e}, best epoch "
            f"{check32['same_best_epoch']}/{check32['heads']}; float64: {check64['prediction_relative_difference']:.1e}"
            f" {'ok' if check64['ok'] else 'FAIL'}")
    numbers = ("n_labels", "fast_seconds", "baseline_seconds", "head_steps", "stack_steps")
    per_budget = [{key: budget[key] for key in numbers} for budget in per_budget]
    totals = {key: sum(budget[key] for budget in per_budget) for key in numbers[1:]}
    return {
        "path": "sampling grid", "size": f"{num_heads} heads x {len(grid['ns'])} N", "unit": "s",
        "baseline": totals["baseline_seconds"], "fast": totals["fast_seconds"],
        "agreement": text,
        "raw": {"heads_per_budget": num_heads, "ns": grid["ns"], "seeds": grid["seeds"], "epochs": grid["epochs"],
                "pool": grid["pool"], "latents": str(latents_path) if latents_path else "synthetic", **totals,
                "ms_per_stack_step": 1e3 * totals["fast_seconds"] / totals["stack_steps"],
                "ms_per_head_step": 1e3 * totals["baseline_seconds"] / totals["head_steps"],
                "per_budget": per_budget},
        "check": {"float32": check32, "float64": check64, "ok": check64["ok"]},
    }


# --- the table ---------------------------------------------------------------------

def ratio(row):
    """How many times faster the fast path is: throughput ratio, or time ratio."""
    if row["unit"] == "s":
        return row["baseline"] / row["fast"]
    return row["fast"] / row["baseline"]


def format_value(value, unit):
    return f"{value:,.0f} mol/s" if unit == "mol/s" else f"{value:.2f} s"


def table(rows):
    """Fixed-width text table of the result rows."""
    header = ("path", "baseline", "fast", "ratio", "agreement", "device")
    lines = [(f"{row['path']} ({row['size']})", format_value(row["baseline"], row["unit"]),
              format_value(row["fast"], row["unit"]), f"{row['ratio']:.1f}x", row["agreement"], row["device"])
             for row in rows]
    widths = [max(len(line[i]) for line in [header, *lines]) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip()
                     for line in [header, *lines])


def missed_targets(rows, device):
    """Rows below their wanted ratio (the targets are for the CPU) or whose agreement check failed."""
    slow = [f"{row['path']}: {row['ratio']:.1f}x < {TARGETS[row['path']]:.0f}x" for row in rows
            if device.type == "cpu" and row["path"] in TARGETS and row["ratio"] < TARGETS[row["path"]]]
    return slow + [f"{row['path']}: agreement check not passed" for row in rows if not row["check"]["ok"]]


def run(args):
    """Every row in turn; returns the report (rows, checks, sizes) that --out writes. The load average
    before and after is kept: other processes on the cores distort every timing."""
    if args.threads is not None:
        torch.set_num_threads(args.threads)
        threadpool_limits(args.threads)  # numpy's BLAS, which the sklearn baseline uses
    device = get_device(args.device)
    load_before = os.getloadavg()
    cfg = resolve_config({"ATOM_TYPES": list(qm9.QM9_ATOM_TYPES)})
    sizes = bench_sizes(args.quick, device)
    start = time.perf_counter()
    setup = qm9_setup(cfg, sizes, device)
    rows = [bench_training(setup, cfg, sizes, device), bench_gather(setup, cfg, sizes, device),
            bench_latents(setup, cfg, sizes, device),
            bench_descriptors(setup, cfg, sizes, device), bench_kcenter(sizes, cfg.SEED, device),
            bench_grid(sizes, args.latents, cfg.SEED, device)]
    for row in rows:
        row["ratio"] = ratio(row)
        row.setdefault("device", device.type)
    return {"mode": "quick" if args.quick else "full", "device": str(device), "threads": torch.get_num_threads(),
            "sizes": sizes, "rows": rows, "checks": {row["path"]: row["check"] for row in rows},
            "missed_targets": missed_targets(rows, device), "table": table(rows),
            "seconds": time.perf_counter() - start, "load_average": {"before": load_before, "after": os.getloadavg()}}


def main(argv=None):
    args = parse_args(argv)
    report = run(args)
    load = report["load_average"]
    print(f"{report['mode']} benchmark on {report['device']} ({report['threads']} torch threads), "
          f"{report['seconds']:.0f} s; 1-min load average {load['before'][0]:.1f} before, {load['after'][0]:.1f} after")
    print(report["table"])
    for line in report["missed_targets"]:
        print(f"target missed: {line}")
    if args.out is not None:
        write_text(args.out, json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    run_cli(main)
