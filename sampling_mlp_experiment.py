"""Which molecules to label? Random choice against k-center greedy on the encoder latents.

For every seed and strategy, one selection run to the largest budget N picks molecules from the
training pool of latents_qm9.npz; the first N of it (the orders are nested) label a fresh
ResidualMLP that predicts HOMO (eV), early-stopped on the validation split and scored on the test
split. All heads of one N train together (vmap over stacked parameters), each exactly as it would
alone. Outputs: per-strategy and combined CSVs, summary.csv with paired statistics, curve_mae.png.

    python sampling_mlp_experiment.py --latents runs/quick/latents_qm9.npz --out-dir runs/quick/sampling
"""
import argparse
import copy
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from scipy import stats
from tqdm import tqdm

from models import ResidualMLP
from utils import (InputError, add_run_arguments, atomic_path, check_new_run_dir, default_run_dir, get_device,
                   load_npz, mae, overrides_from_args, r2, resolve_config, rmse, run_cli, run_folder,
                   save_learning_curve, standardize, start_run)

RESULT_FILES = {"random": "results_random.csv", "kcenter": "results_latent.csv"}
CURVE_LABELS = {"random": "random", "kcenter": "k-center on latents"}
INDEX_KEYS = ("idx_train", "idx_val", "idx_test")
REQUIRED_KEYS = ("z_all", "y_all", *INDEX_KEYS)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--latents", type=Path, required=True, help="latents_qm9.npz from train_encoder_qm9.py")
    parser.add_argument("--strategies", nargs="+", help=f"override SAMPLING_STRATEGIES, from {list(STRATEGIES)}")
    parser.add_argument("--seeds", nargs="+", type=int, help="override SAMPLING_SEEDS")
    parser.add_argument("--ns", nargs="+", type=int, help="override SAMPLING_NS, the label budgets")
    parser.add_argument("--mlp-hidden-dim", type=int, help="override MLP_HIDDEN_DIM")
    parser.add_argument("--mlp-layers", type=int, help="override MLP_LAYERS")
    parser.add_argument("--mlp-lr", type=float, help="override MLP_LR")
    parser.add_argument("--mlp-epochs", type=int, help="override MLP_EPOCHS")
    add_run_arguments(parser)
    return parser.parse_args(argv)


def config_from_args(args):
    flags = {"SAMPLING_STRATEGIES": args.strategies, "SAMPLING_SEEDS": args.seeds, "SAMPLING_NS": args.ns,
             "MLP_HIDDEN_DIM": args.mlp_hidden_dim, "MLP_LAYERS": args.mlp_layers, "MLP_LR": args.mlp_lr,
             "MLP_EPOCHS": args.mlp_epochs}
    return resolve_config(overrides_from_args(flags, args.set))


# --- input validation --------------------------------------------------------------

def load_latents(path):
    """The arrays of latents_qm9.npz, checked: keys, shapes, dtypes, finite values, disjoint in-range splits."""
    arrays = load_npz(path, "latents file")
    missing = [key for key in REQUIRED_KEYS if key not in arrays]
    if missing:
        raise InputError(f"{path}: missing keys {missing}; expected {list(REQUIRED_KEYS)}")
    z, y = arrays["z_all"], arrays["y_all"]
    if z.ndim != 2 or y.shape != (len(z),) or not np.issubdtype(z.dtype, np.floating) \
            or not np.issubdtype(y.dtype, np.floating):
        raise InputError(f"{path}: expected float z_all (M, D) and y_all (M,), got {z.dtype} {z.shape} "
                         f"and {y.dtype} {y.shape}")
    if z.shape[1] == 0:
        raise InputError(f"{path}: z_all has no columns; expected latents of one or more dimensions")
    for key in ("z_all", "y_all"):
        bad = int((~np.isfinite(arrays[key])).sum())
        if bad:
            raise InputError(f"{path}: {key} has {bad} NaN or infinite values")
    largest, limit = float(np.abs(z).max()), max_latent_magnitude(z.shape[1])
    if largest > limit:
        raise InputError(f"{path}: z_all reaches {largest:.3g}; expected values below {limit:.3g} in magnitude, so "
                         "that squared distances between latents stay finite in float32")
    seen = np.zeros(len(z), dtype=bool)
    for key in INDEX_KEYS:
        index = arrays[key]
        if index.ndim != 1 or not np.issubdtype(index.dtype, np.integer) or len(index) == 0:
            raise InputError(f"{path}: {key} must be a non-empty 1-D integer array, got {index.dtype} {index.shape}")
        if index.min() < 0 or index.max() >= len(z):
            raise InputError(f"{path}: {key} has indices outside 0..{len(z) - 1}")
        if seen[index].any() or len(np.unique(index)) != len(index):
            raise InputError(f"{path}: {key} repeats indices or overlaps another split")
        seen[index] = True
        arrays[key] = index.astype(np.int64)  # any integer type on disk; torch indexes with int64
    test_labels = y[arrays["idx_test"]]
    if len(test_labels) < 2 or test_labels.min() == test_labels.max():
        raise InputError(f"{path}: idx_test holds {len(test_labels)} molecules with {len(np.unique(test_labels))} "
                         "distinct labels; R2 needs at least 2 test molecules with different labels")
    return arrays


def max_latent_magnitude(dim):
    """The largest |z| whose squared distances, up to dim * (2 |z|)^2, fit in float32."""
    return float(np.sqrt(np.finfo(np.float32).max / (4 * dim)))


def check_plan(cfg, pool_size):
    """Strategies, seeds and budgets that the pool can serve; budgets sorted ascending."""
    unknown = sorted(set(cfg.SAMPLING_STRATEGIES) - set(STRATEGIES))
    if unknown or not cfg.SAMPLING_STRATEGIES:
        raise InputError(f"strategies {unknown or '[]'}: expected one or more of {list(STRATEGIES)}")
    if len(set(cfg.SAMPLING_STRATEGIES)) != len(cfg.SAMPLING_STRATEGIES):
        raise InputError(f"strategies {cfg.SAMPLING_STRATEGIES}: a strategy listed twice would count its seeds twice")
    if not cfg.SAMPLING_SEEDS or len(set(cfg.SAMPLING_SEEDS)) != len(cfg.SAMPLING_SEEDS):
        raise InputError(f"seeds {cfg.SAMPLING_SEEDS}: expected one or more distinct integers")
    if not cfg.SAMPLING_NS:
        raise InputError("the list of label budgets N is empty")
    bad = [n for n in cfg.SAMPLING_NS if not 2 <= n <= pool_size]
    if bad:
        raise InputError(f"label budgets {bad}: each N must be in 2..{pool_size}, the size of the training pool")
    return sorted(set(cfg.SAMPLING_NS))


# --- selection ---------------------------------------------------------------------

def _nearest_distance(z, centres):
    """Euclidean distance of every row of z (n, d) to the nearest of centres (c, d), from exact
    differences in one pass over z: (n,)."""
    return torch.cdist(z, centres, compute_mode="donot_use_mm_for_euclid_dist").amin(dim=1)


def kcenter_greedy(z, n_samples, seed, already_selected=None):
    """Rows of z (n, d) picked greedily: each is the row farthest from every centre so far (a
    2-approximation of the minimax covering). The first centre is drawn with `seed`, unless
    `already_selected` rows are given: then they are the starting centres and are never picked.
    The order is nested: its first k rows answer every smaller budget k. O(n d) per pick, O(n) memory."""
    n = z.shape[0]
    start = torch.as_tensor([] if already_selected is None else already_selected, dtype=torch.long, device=z.device)
    if not 1 <= n_samples <= n - len(start):
        raise InputError(f"k-center: cannot pick {n_samples} from {n} rows with {len(start)} already selected")
    min_dist = torch.full((n,), float("inf"), dtype=z.dtype, device=z.device)
    if len(start):
        for chunk in start.split(1024):  # the nearest labelled row, a block of them at a time
            min_dist = torch.minimum(min_dist, _nearest_distance(z, z[chunk]))
        min_dist[start] = -1.0  # chosen rows never come back
        centre = torch.argmax(min_dist).view(1)
    else:
        centre = torch.randint(n, (), generator=torch.Generator().manual_seed(seed)).view(1).to(z.device)
    selected = torch.empty(n_samples, dtype=torch.long, device=z.device)
    for k in range(n_samples):  # `centre` stays a 1-element tensor: no pick waits for the device
        selected[k:k + 1] = centre
        min_dist = torch.minimum(min_dist, _nearest_distance(z, z.index_select(0, centre)))
        min_dist.index_fill_(0, centre, -1.0)
        centre = torch.argmax(min_dist).view(1)
    return selected


def random_selection(z, n_samples, seed):
    """A seeded random order of the rows of z, cut to n_samples; nested like k-center."""
    order = torch.randperm(len(z), generator=torch.Generator().manual_seed(seed))
    return order[:n_samples].to(z.device)


STRATEGIES = {"random": random_selection, "kcenter": kcenter_greedy}  # name -> fn(z_pool, n, seed)


def select(strategy, z_pool, n_samples, seed):
    return STRATEGIES[strategy](z_pool, n_samples, seed)


# --- property heads ----------------------------------------------------------------

def new_head(seed, latent_dim, cfg):
    """A ResidualMLP whose initial weights depend only on `seed`."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return ResidualMLP(latent_dim, cfg.MLP_HIDDEN_DIM, cfg.MLP_LAYERS)


def epoch_batches(generator, n, batch_size):
    """Shuffled minibatch row indices of one epoch (what train_mlp_heads draws per head)."""
    return torch.split(torch.randperm(n, generator=generator), batch_size)


def train_mlp(model, x, y, x_val, y_val, cfg, seed):
    """One head, the plain way: Adam on MSE over standardized y, early stopping on validation MAE.
    x (N, d), y (N,) standardized; x_val (V, d), y_val (V,) in the same units.
    Returns the model with its best-validation weights and the epoch they came from."""
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.MLP_LR)
    generator = torch.Generator().manual_seed(seed)
    best_mae, best_epoch, best_state = float("inf"), 0, copy.deepcopy(model.state_dict())
    for epoch in range(1, cfg.MLP_EPOCHS + 1):
        model.train()
        for rows in epoch_batches(generator, len(x), cfg.MLP_BATCH_SIZE):
            rows = rows.to(x.device)
            loss = ((model(x[rows]) - y[rows]) ** 2).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        model.eval()
        with torch.no_grad():
            val_mae = float((model(x_val) - y_val).abs().mean())
        if val_mae < best_mae:
            best_mae, best_epoch, best_state = val_mae, epoch, copy.deepcopy(model.state_dict())
        elif epoch - best_epoch >= cfg.MLP_PATIENCE:
            break
    model.load_state_dict(best_state)
    return model, best_epoch


class StackedHeads:
    """H ResidualMLPs as one stack of parameters {name: (H, ...)}, evaluated with vmap."""

    def __init__(self, seeds, latent_dim, cfg, device, dtype):
        heads = [new_head(seed, latent_dim, cfg).to(device, dtype) for seed in seeds]
        self.initial_params, _ = torch.func.stack_module_state(heads)
        self.template = copy.deepcopy(heads[0]).to("meta")

    def _call(self, params, x):
        return torch.func.functional_call(self.template, params, (x,))

    def per_head(self, params, x):
        """x (H, B, d), one batch per head -> (H, B)."""
        return torch.vmap(self._call)(params, x)

    def shared(self, params, x):
        """x (B, d), the same batch for every head -> (H, B)."""
        return torch.vmap(self._call, in_dims=(0, None))(params, x)


def keep_heads(params, optimizer, keep):
    """The stacked parameters and Adam state of only the heads where `keep` (H,) is True."""
    kept = {name: p.detach()[keep].requires_grad_() for name, p in params.items()}
    kept_optimizer = torch.optim.Adam(kept.values(), **optimizer.defaults)
    for old, new in zip(params.values(), kept.values()):
        kept_optimizer.state[new] = {key: value if key == "step" else value[keep]
                                     for key, value in optimizer.state[old].items()}
    return kept, kept_optimizer


def train_mlp_heads(x, y, x_val, y_val, seeds, cfg):
    """H heads at once, each exactly as train_mlp would train it alone (own init, batch order and
    early stopping); a head that stops leaves the stack, so no work is spent on it afterwards.
    x (H, N, d), y (H, N) standardized per head; x_val (V, d) shared, y_val (H, V).
    Returns (best parameters {name: (H, ...)}, best epoch per head (H,), the StackedHeads)."""
    num_heads, n = y.shape
    heads = StackedHeads(seeds, x.shape[2], cfg, x.device, x.dtype)
    params = heads.initial_params
    optimizer = torch.optim.Adam(params.values(), lr=cfg.MLP_LR)
    generators = [torch.Generator().manual_seed(seed) for seed in seeds]
    best = {name: p.detach().clone() for name, p in params.items()}
    best_mae = torch.full((num_heads,), float("inf"), dtype=x.dtype, device=x.device)
    best_epoch = torch.zeros(num_heads, dtype=torch.long, device=x.device)
    live = torch.arange(num_heads, device=x.device)  # heads still training, in stack order
    for epoch in range(1, cfg.MLP_EPOCHS + 1):
        # each head's own shuffle, as train_mlp draws it; one copy to the device per epoch
        order = torch.stack([torch.randperm(n, generator=generators[h]) for h in live.tolist()]).to(x.device)
        for rows in order.split(cfg.MLP_BATCH_SIZE, dim=1):  # (live heads, B)
            prediction = heads.per_head(params, x[live[:, None], rows])
            loss = ((prediction - y[live[:, None], rows]) ** 2).mean(dim=1).sum()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        with torch.no_grad():
            val_mae = (heads.shared(params, x_val) - y_val[live]).abs().mean(dim=1)
        improved = val_mae < best_mae[live]
        for name, p in params.items():
            mask = improved.view(-1, *[1] * (p.dim() - 1))
            best[name][live] = torch.where(mask, p.detach(), best[name][live])
        best_mae[live] = torch.where(improved, val_mae, best_mae[live])
        best_epoch[live] = torch.where(improved, epoch, best_epoch[live])
        going = epoch - best_epoch[live] < cfg.MLP_PATIENCE
        if not bool(going.all()):  # the one host sync of an epoch
            live = live[going]
            if len(live) == 0:
                break
            params, optimizer = keep_heads(params, optimizer, going)
    return best, best_epoch, heads


def regression_metrics(y_true, y_pred):
    """Test metrics in eV of one head."""
    return {"mae": mae(y_true, y_pred), "rmse": rmse(y_true, y_pred), "r2": r2(y_true, y_pred),
            "max_abs_error": float(np.max(np.abs(np.asarray(y_true) - np.asarray(y_pred))))}


def eval_mlp(heads, params, x_test, y_test, y_mean, y_std):
    """Metrics of every head on the test set: predictions are y_mean + y_std * head(x), in eV;
    y_mean and y_std are (H, 1)."""
    with torch.no_grad():
        predictions = y_mean + y_std * heads.shared(params, x_test)
    y_true = y_test.cpu().numpy()
    return [regression_metrics(y_true, p) for p in predictions.cpu().numpy()]


# --- the experiment ----------------------------------------------------------------

def budget_inputs(chosen, inputs):
    """Head inputs for the chosen pool rows (H, N): x (H, N, d), and y (H, N) and y_val (H, V)
    standardized per head by its own labels, with that (mean, std), each (H, 1), to map back to eV."""
    x_pool, y_pool = inputs["pool"]
    y_chosen = y_pool[chosen]
    mean, std = y_chosen.mean(dim=1, keepdim=True), y_chosen.std(dim=1, keepdim=True)
    return x_pool[chosen], (y_chosen - mean) / std, (inputs["val"][1][None] - mean) / std, (mean, std)


def fit_budget(n_labels, plan, selections, inputs, cfg, logger):
    """Train and test every (strategy, seed) head at budget n_labels together; one result row each."""
    chosen = torch.stack([selections[key][:n_labels] for key in plan])  # (H, N) pool rows
    x, y, y_val, (y_mean, y_std) = budget_inputs(chosen, inputs)
    seeds = [seed for _, seed in plan]
    start = time.perf_counter()
    params, best_epoch, heads = train_mlp_heads(x, y, inputs["val"][0], y_val, seeds, cfg)
    fit_seconds = (time.perf_counter() - start) / len(plan)
    never = [key for key, epoch in zip(plan, best_epoch.tolist()) if epoch == 0]
    if never:  # its validation MAE was never finite: an untrained head is no result
        raise InputError(f"N={n_labels}: the heads of {never} diverged from the first epoch (validation MAE never "
                         f"finite); lower MLP_LR={cfg.MLP_LR}")
    metrics = eval_mlp(heads, params, *inputs["test"], y_mean, y_std)
    rows = []
    for (strategy, seed), m, epoch in zip(plan, metrics, best_epoch.tolist()):
        rows.append({"strategy": strategy, "n_labels": n_labels, "seed": seed, **m, "best_epoch": epoch,
                     "fit_seconds": fit_seconds})
        logger.info("N=%5d %-8s seed %d: test MAE %.4f eV (%.1f meV) RMSE %.4f R2 %.3f, best epoch %d", n_labels,
                    strategy, seed, m["mae"], 1000 * m["mae"], m["rmse"], m["r2"], epoch)
    return rows


def label_efficiency(ns, random_mae, target_mae):
    """The budget random selection needs to reach `target_mae`, interpolated in log-log on the mean
    random curve (ns ascending); NaN when the curve does not cross that MAE."""
    log_n, log_mae, target = np.log(ns), np.log(random_mae), np.log(target_mae)
    for i in range(len(ns) - 1):
        high, low = log_mae[i], log_mae[i + 1]
        if high >= target >= low and high > low:
            return float(np.exp(log_n[i] + (high - target) / (high - low) * (log_n[i + 1] - log_n[i])))
    return float("nan")


def summarize(results):
    """Per (strategy, N): mean, std and count over seeds; for strategies other than random, the
    seed-paired MAE difference to random with its standard error and paired t-test p-value, and
    the random budget that reaches the same mean MAE (label_efficiency = that budget / N)."""
    summary = results.groupby(["strategy", "n_labels"]).agg(
        n_seeds=("seed", "size"), mae_mean=("mae", "mean"), mae_std=("mae", "std"), rmse_mean=("rmse", "mean"),
        rmse_std=("rmse", "std"), r2_mean=("r2", "mean"), r2_std=("r2", "std")).reset_index()
    if "random" not in set(results["strategy"]):
        return summary
    random_curve = summary[summary["strategy"] == "random"].sort_values("n_labels")
    random_rows = results[results["strategy"] == "random"].set_index(["n_labels", "seed"])["mae"]
    paired = []
    for row in summary.itertuples():
        if row.strategy == "random":
            paired.append({})
            continue
        mine = results[(results["strategy"] == row.strategy) & (results["n_labels"] == row.n_labels)]
        mine = mine.set_index(["n_labels", "seed"])["mae"]
        theirs = random_rows.loc[mine.index]
        diff = (mine - theirs).to_numpy()
        n_equivalent = label_efficiency(random_curve["n_labels"].to_numpy(), random_curve["mae_mean"].to_numpy(),
                                        row.mae_mean)
        paired.append({
            "mae_diff_vs_random": diff.mean(),
            "mae_diff_se": diff.std(ddof=1) / np.sqrt(len(diff)) if len(diff) > 1 else np.nan,
            "p_value_paired_t": stats.ttest_rel(mine, theirs).pvalue if len(diff) > 1 else np.nan,
            "random_n_equivalent": n_equivalent,
            "label_efficiency": n_equivalent / row.n_labels,
        })
    return pd.concat([summary, pd.DataFrame(paired, index=summary.index)], axis=1)


def write_csv(frame, path):
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)


def write_outputs(out_dir, results, summary, ns, mean_predictor_mae):
    """CSVs (per strategy, combined, summary) and the MAE learning curve, all at the end of the run."""
    for strategy, frame in results.groupby("strategy"):
        write_csv(frame, out_dir / RESULT_FILES[strategy])
    write_csv(results, out_dir / "results_all.csv")
    write_csv(summary, out_dir / "summary.csv")
    curves = {CURVE_LABELS[strategy]: frame.pivot(index="seed", columns="n_labels", values="mae")[ns].to_numpy()
              for strategy, frame in results.groupby("strategy", sort=False)}
    save_learning_curve(ns, curves, out_dir / "curve_mae.png", ylabel="test MAE of HOMO (eV)",
                        hline=(mean_predictor_mae, f"predict the train mean ({mean_predictor_mae:.3f} eV)"))


def experiment_inputs(arrays, cfg, device):
    """Head inputs {"pool", "val", "test": (x (rows, d), y (rows,))}, with x the latents standardized
    by the (unlabelled) pool and "val" the early-stopping subset; and the pool latents k-center measures."""
    pool = torch.as_tensor(arrays["idx_train"], device=device)
    val_rows = arrays["idx_val"]
    if cfg.MLP_VAL_SIZE is not None and cfg.MLP_VAL_SIZE < len(val_rows):
        val_rows = np.random.default_rng(cfg.SEED).choice(val_rows, cfg.MLP_VAL_SIZE, replace=False)
    z_all = torch.as_tensor(arrays["z_all"], dtype=torch.float32, device=device)
    y_all = torch.as_tensor(arrays["y_all"], dtype=torch.float32, device=device)
    x_all = standardize(z_all, pool)[0]
    splits = {"pool": pool, "val": torch.as_tensor(val_rows, device=device),
              "test": torch.as_tensor(arrays["idx_test"], device=device)}
    inputs = {name: (x_all[rows], y_all[rows]) for name, rows in splits.items()}
    return inputs, x_all[pool] if cfg.KCENTER_STANDARDIZE else z_all[pool]


def select_all(plan, z_select, n_max, pool_rows, out_dir, logger):
    """One nested selection to n_max per (strategy, seed), each also saved as npz rows in out_dir."""
    selections = {}
    for strategy, seed in plan:
        start = time.perf_counter()
        selections[strategy, seed] = select(strategy, z_select, n_max, seed)
        with atomic_path(out_dir / f"selected_{strategy}_seed{seed}.npy") as tmp, open(tmp, "wb") as f:
            np.save(f, pool_rows[selections[strategy, seed].cpu().numpy()])
        logger.info("selected %d with %s, seed %d, in %.2f s", n_max, strategy, seed, time.perf_counter() - start)
    return selections


def check_label_spread(selections, ns, y_pool):
    """Before any training: every selection's labels vary at every budget, or its head has nothing to fit."""
    for (strategy, seed), order in selections.items():
        flat = [n for n in ns if float(y_pool[order[:n]].std()) == 0]
        if flat:
            raise InputError(f"{strategy} seed {seed}: the first {flat[0]} selected molecules all have the same "
                             "label, so a head has nothing to fit")


def run_experiment(cfg, arrays, ns, out_dir, device, logger):
    """Selections, one batched fit per budget, statistics and outputs, for checked latents and budgets."""
    inputs, z_select = experiment_inputs(arrays, cfg, device)
    y_pool, y_test = inputs["pool"][1], inputs["test"][1]
    logger.info("latents: %d molecules, dim %d; pool %d, early-stopping val %d, test %d; budgets %s",
                len(arrays["z_all"]), z_select.shape[1], len(y_pool), len(inputs["val"][1]), len(y_test), ns)
    plan = [(strategy, seed) for strategy in cfg.SAMPLING_STRATEGIES for seed in cfg.SAMPLING_SEEDS]
    selections = select_all(plan, z_select, ns[-1], arrays["idx_train"], out_dir, logger)
    check_label_spread(selections, ns, y_pool)
    mean_predictor_mae = mae(y_test, torch.full_like(y_test, float(y_pool.mean())))
    logger.info("predicting the train-pool mean gives test MAE %.4f eV", mean_predictor_mae)
    rows = []
    for n_labels in tqdm(ns, desc="budgets", disable=None):
        rows += fit_budget(n_labels, plan, selections, inputs, cfg, logger)
    results = pd.DataFrame(rows)
    summary = summarize(results)
    logger.info("summary (MAE in eV; diff = strategy - random, paired by seed):\n%s",
                summary.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    write_outputs(out_dir, results, summary, ns, mean_predictor_mae)
    logger.info("wrote results to %s", out_dir)


def main(argv=None):
    args = parse_args(argv)
    cfg = config_from_args(args)
    arrays = load_latents(args.latents)  # every input is checked before the run folder exists
    ns = check_plan(cfg, len(arrays["idx_train"]))
    device = get_device(args.device)
    out_dir = args.out_dir or default_run_dir(cfg, "sampling")
    check_new_run_dir(out_dir)
    with run_folder(out_dir):
        logger = start_run(cfg, out_dir, "sampling", "sampling.log", latents=str(args.latents))
        run_experiment(cfg, arrays, ns, out_dir, device, logger)


if __name__ == "__main__":
    run_cli(main)
