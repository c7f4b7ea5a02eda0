"""Which structures to label? Label-free selection strategies on the encoder latents against random choice.

For every seed and strategy (selection.py), structures are picked from the training pool of a latents
file (latents_qm9.npz, latents_coremof.npz) at every budget N (nested strategies: the first N picks
of one run to the largest N). Their labels (the property the npz names, HOMO in eV for QM9) fit
fresh heads: a ResidualMLP, early-stopped on the validation split, and
kernel ridge regression, whose kernel width and ridge are chosen on the same validation molecules.
Both are scored on the test split. All MLP heads of one N train together (vmap over stacked
parameters), each exactly as it would alone. Outputs: per-strategy and combined CSVs, summary.csv
with paired, Holm-adjusted statistics per head, learning curves, parity and selected-label plots.

    python sampling_mlp_experiment.py --latents runs/quick/latents_qm9.npz --out-dir runs/quick/sampling

With --select, it trains nothing: it picks --budget structures to label next with one strategy, after
the structures of --labelled (the dataset's structure index values), and writes to_label.csv.

    python sampling_mlp_experiment.py --latents runs/quick/latents_qm9.npz --select typiclust --budget 100
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

import selection
from models import ResidualMLP
from utils import (InputError, add_run_arguments, atomic_path, default_run_dir, get_device,
                   load_npz, mae, overrides_from_args, r2, resolve_config, rmse, run_cli, run_folder,
                   save_label_histograms, save_learning_curves, save_parity, standardize, start_run,
                   std_floor)

STRATEGIES = list(selection.NESTED)
HEADS = ("mlp", "krr")
RESULT_FILES = {"random": "results_random.csv", "kcenter": "results_latent.csv"}  # the others: results_<name>.csv
CURVE_LABELS = {"random": "random", "kcenter": "k-center", "kmeans": "k-means", "typiclust": "TypiClust",
                "herding": "kernel herding"}
HEAD_TITLES = {"mlp": "ResidualMLP head", "krr": "kernel ridge head"}
INDEX_KEYS = ("idx_train", "idx_val", "idx_test")
REQUIRED_KEYS = ("z_all", "y_all", *INDEX_KEYS)
METRICS = ("mae", "rmse", "r2", "p95_abs_error", "max_abs_error", "val_mae")  # val_mae: what to choose by


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--latents", type=Path, required=True,
                        help="latents_<dataset>.npz from train_encoder_qm9.py or export_pretrained_latents.py")
    parser.add_argument("--strategies", nargs="+", help=f"override SAMPLING_STRATEGIES, from {STRATEGIES}")
    parser.add_argument("--heads", nargs="+", help=f"override HEAD, from {list(HEADS)}")
    parser.add_argument("--seeds", nargs="+", type=int, help="override SAMPLING_SEEDS")
    parser.add_argument("--ns", nargs="+", type=int, help="override SAMPLING_NS, the label budgets")
    parser.add_argument("--mlp-hidden-dim", type=int, help="override MLP_HIDDEN_DIM")
    parser.add_argument("--mlp-layers", type=int, help="override MLP_LAYERS")
    parser.add_argument("--mlp-lr", type=float, help="override MLP_LR")
    parser.add_argument("--mlp-epochs", type=int, help="override MLP_EPOCHS")
    parser.add_argument("--reference", nargs="+", metavar="[LABEL=]SUMMARY",
                        help="summary.csv of other runs (another latent, a classical model), drawn dashed in the "
                             "curves; LABEL names each in the legend, by default its folder's name")
    chooser = parser.add_argument_group("selection only (no heads)")
    chooser.add_argument("--select", metavar="STRATEGY", help=f"only pick molecules to label, with one of {STRATEGIES}")
    chooser.add_argument("--budget", type=int, help="how many molecules --select picks")
    chooser.add_argument("--labelled", type=Path,
                         help="structures labelled already: a text file of structure index values (QM9 Index), "
                              "one a line, or a CSV with a structure_index column (such as an earlier to_label.csv)")
    chooser.add_argument("--seed", type=int, default=0, help="seed of the --select strategy (default 0)")
    add_run_arguments(parser)
    return parser.parse_args(argv)


def config_from_args(args):
    flags = {"SAMPLING_STRATEGIES": args.strategies, "SAMPLING_SEEDS": args.seeds, "SAMPLING_NS": args.ns,
             "HEAD": args.heads, "MLP_HIDDEN_DIM": args.mlp_hidden_dim, "MLP_LAYERS": args.mlp_layers,
             "MLP_LR": args.mlp_lr, "MLP_EPOCHS": args.mlp_epochs}
    return resolve_config(overrides_from_args(flags, args.set))


# --- input validation --------------------------------------------------------------

LEGACY_QM9 = {"dataset": "qm9", "target_name": "homo", "target_unit": "eV"}  # files from before the npz named them


def load_latents(path):
    """The arrays of a latents file, checked: keys, shapes, dtypes, finite values, disjoint in-range
    splits. Files from before the npz named its property and dataset hold QM9 HOMO energies in eV
    and call structure_index qm9_index; they are read as such."""
    arrays = load_npz(path, "latents file")
    if "qm9_index" in arrays:
        arrays = {**LEGACY_QM9, "structure_index": arrays.pop("qm9_index"), **arrays}
    for key, legacy in LEGACY_QM9.items():
        arrays[key] = str(arrays.get(key, legacy))
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


def check_names(kind, names, known):
    unknown = sorted(set(names) - set(known))
    if unknown or not names:
        raise InputError(f"{kind} {unknown or '[]'}: expected one or more of {list(known)}")
    if len(set(names)) != len(names):
        raise InputError(f"{kind} {names}: one listed twice would count its seeds twice")


def check_plan(cfg, pool_size):
    """Strategies, heads, seeds and budgets that the pool can serve; budgets sorted ascending."""
    check_names("strategies", cfg.SAMPLING_STRATEGIES, STRATEGIES)
    check_names("heads", cfg.HEAD, HEADS)
    if not cfg.SAMPLING_SEEDS or len(set(cfg.SAMPLING_SEEDS)) != len(cfg.SAMPLING_SEEDS):
        raise InputError(f"seeds {cfg.SAMPLING_SEEDS}: expected one or more distinct integers")
    if not cfg.SAMPLING_NS:
        raise InputError("the list of label budgets N is empty")
    bad = [n for n in cfg.SAMPLING_NS if not 2 <= n <= pool_size]
    if bad:
        raise InputError(f"label budgets {bad}: each N must be in 2..{pool_size}, the size of the training pool")
    return sorted(set(cfg.SAMPLING_NS))


def load_references(specs):
    """{label: load_reference(path)} of each `[LABEL=]PATH` of --reference, in the order given."""
    references = {}
    for spec in specs or []:
        label, separator, path = spec.partition("=")
        if not separator or "/" in label:  # a plain path, which may itself hold an "="
            label, path = Path(spec).parent.name or spec, spec
        if label in references:
            raise InputError(f"--reference {spec}: the label {label!r} is taken; name each reference LABEL=PATH")
        references[label] = load_reference(Path(path))
    return references


def load_reference(path):
    """Mean curves of another run's summary.csv, {(head, strategy): (ns, mae means, p95 means or None)};
    a summary without a head column (older runs) holds MLP heads."""
    try:
        summary = pd.read_csv(path)
    except (OSError, ValueError, pd.errors.ParserError) as err:
        raise InputError(f"{path}: reference summary not readable ({err})") from None
    missing = [column for column in ("strategy", "n_labels", "mae_mean") if column not in summary]
    if missing:
        raise InputError(f"{path}: reference summary lacks columns {missing}")
    if "head" not in summary:
        summary["head"] = "mlp"
    curves = {}
    for (head, strategy), frame in summary.sort_values("n_labels").groupby(["head", "strategy"]):
        p95 = frame["p95_abs_error_mean"].to_numpy() if "p95_abs_error_mean" in frame else None
        curves[head, strategy] = (frame["n_labels"].to_numpy(), frame["mae_mean"].to_numpy(), p95)
    return curves


def read_labelled(path, arrays):
    """Pool rows (positions in idx_train) of the structure index values in `path`, checked: every
    value a structure of the pool (arrays has structure_index), none twice."""
    try:
        lines = [line.strip() for line in Path(path).read_text().splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(f"{path}: labelled-molecules file not readable ({err})") from None
    if lines and not lines[0].lstrip("-").isdigit():  # a CSV with a header
        header = lines[0].split(",")
        names = [name for name in ("structure_index", "qm9_index") if name in header]  # to_label.csv, then older
        if not names:
            raise InputError(f"{path}: expected a structure_index column or one structure index value a line")
        column = header.index(names[0])
        lines = [line.split(",")[column] for line in lines[1:]]
    try:
        wanted = np.array([int(value) for value in lines], dtype=np.int64)
    except ValueError as err:
        raise InputError(f"{path}: not a structure index value ({err})") from None
    values, counts = np.unique(wanted, return_counts=True)
    if (counts > 1).any():
        raise InputError(f"{path}: structure index values listed twice: {values[counts > 1][:5].tolist()}")
    pool_index = arrays["structure_index"][arrays["idx_train"]]
    position = {int(index): row for row, index in enumerate(pool_index)}
    unknown = [int(v) for v in wanted if int(v) not in position]
    if unknown:
        known = set(arrays["structure_index"].tolist())
        outside = [v for v in unknown if v in known]
        raise InputError(f"{path}: {len(unknown)} structure index values are not in the training pool of the npz "
                         f"({len(outside)} of them in its validation or test split), e.g. {unknown[:5]}")
    return np.array([position[int(v)] for v in wanted], dtype=np.int64)


# --- selection ---------------------------------------------------------------------

def standardized_latents(z, pool_rows):
    """Latents (M, d) standardized per column with pool statistics. A column's std is at least a tenth
    of the root-mean-square column std: a column (nearly) constant in the pool, such as a rare bin
    of the descriptor control, would otherwise put the few molecules that differ millions of std
    away, where an MLP head's predictions run off to 1e20 eV."""
    return standardize(z, pool_rows, min_std=std_floor(z[pool_rows].std(dim=0)))[0]


def selection_latents(arrays, cfg, device):
    """The pool latents (n, d) that every strategy measures, standardized per KCENTER_STANDARDIZE."""
    z_pool = torch.as_tensor(arrays["z_all"][arrays["idx_train"]], dtype=torch.float32, device=device)
    return standardized_latents(z_pool, slice(None)) if cfg.KCENTER_STANDARDIZE else z_pool


def select_all(selector, plan, ns, pool_rows, out_dir, logger):
    """Picks {(strategy, seed, N): pool rows (N,)} for every budget: one run to the largest N for a
    nested strategy, one per N otherwise. The picks of the largest N are also saved as npz rows."""
    selections = {}
    for strategy, seed in plan:
        start = time.perf_counter()
        if selection.NESTED[strategy]:
            order = selector(strategy, ns[-1], seed)
            selections.update({(strategy, seed, n): order[:n] for n in ns})
        else:
            selections.update({(strategy, seed, n): selector(strategy, n, seed) for n in ns})
        with atomic_path(out_dir / f"selected_{strategy}_seed{seed}.npy") as tmp, open(tmp, "wb") as f:
            np.save(f, pool_rows[selections[strategy, seed, ns[-1]].cpu().numpy()])
        logger.info("selected %s with %s, seed %d, in %.2f s", ns if not selection.NESTED[strategy] else ns[-1],
                    strategy, seed, time.perf_counter() - start)
    return selections


def check_label_spread(selections, y_pool):
    """Before any training: every selection's labels vary, or its head has nothing to fit."""
    for (strategy, seed, n), rows in sorted(selections.items(), key=lambda item: item[0][2]):
        if float(y_pool[rows].std()) == 0:
            raise InputError(f"{strategy} seed {seed}: the {n} selected molecules all have the same label, so a "
                             "head has nothing to fit")


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
    Returns (best parameters {name: (H, ...)}, best epoch (H,) and its validation MAE (H,) per head,
    the StackedHeads)."""
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
    return best, best_epoch, best_mae, heads


def krr_fit(x, y, x_val, y_val, widths, ridges):
    """Kernel ridge regression with a Gaussian kernel, in float64: x (N, d), y (N,) standardized;
    the width (a multiple of the median pairwise distance of x) and the ridge are the pair of the
    grid with the lowest MAE on x_val (V, d), y_val (V,). One eigendecomposition per width serves
    every ridge: alpha = Q (L + ridge)^-1 Q^T y. Returns {x, alpha (N,), gamma, width, ridge, val_mae}."""
    x, y, x_val, y_val = (t.double() for t in (x, y, x_val, y_val))
    squared = selection.squared_distances(x, x)
    median = squared[tuple(torch.triu_indices(len(x), len(x), offset=1, device=x.device))].median().sqrt()
    val_squared = selection.squared_distances(x_val, x)
    best = {"val_mae": float("inf")}
    for width in widths:
        gamma = 1.0 / (2.0 * (width * median) ** 2)
        eigenvalues, eigenvectors = torch.linalg.eigh(torch.exp(-gamma * squared))
        projected = eigenvectors.T @ y  # (N,)
        val_basis = torch.exp(-gamma * val_squared) @ eigenvectors  # (V, N)
        for ridge in ridges:
            coefficients = projected / (eigenvalues + ridge)
            val_mae = float((val_basis @ coefficients - y_val).abs().mean())
            if val_mae < best["val_mae"]:
                best = {"x": x, "alpha": eigenvectors @ coefficients, "gamma": gamma, "width": width, "ridge": ridge,
                        "val_mae": val_mae}
    return best


def krr_predict(model, x):
    """Predictions (T,) of a krr_fit model at x (T, d), a block of rows at a time."""
    return torch.cat([torch.exp(-model["gamma"] * selection.squared_distances(rows.double(), model["x"]))
                      @ model["alpha"] for rows in x.split(4096)])


def regression_metrics(y_true, y_pred):
    """Test metrics in label units of one head: the bulk (MAE, RMSE, R2) and the tail (95th percentile and
    maximum of the absolute error)."""
    error = np.abs(np.asarray(y_true, dtype=np.float64) - np.asarray(y_pred, dtype=np.float64))
    return {"mae": mae(y_true, y_pred), "rmse": rmse(y_true, y_pred), "r2": r2(y_true, y_pred),
            "p95_abs_error": float(np.percentile(error, 95)), "max_abs_error": float(error.max())}


# --- the experiment ----------------------------------------------------------------

def budget_inputs(chosen, inputs):
    """Head inputs for the chosen pool rows (H, N): x (H, N, d), and y (H, N) and y_val (H, V)
    standardized per head by its own labels, with that (mean, std), each (H, 1), to map back to label units."""
    x_pool, y_pool = inputs["pool"]
    y_chosen = y_pool[chosen]
    mean, std = y_chosen.mean(dim=1, keepdim=True), y_chosen.std(dim=1, keepdim=True)
    return x_pool[chosen], (y_chosen - mean) / std, (inputs["val"][1][None] - mean) / std, (mean, std)


def fit_mlp_heads(x, y, y_val, inputs, seeds, cfg):
    """Test predictions (H, T) and validation MAEs (H,) in standardized units of MLP heads trained
    together, and per head its extra result columns."""
    params, best_epoch, best_mae, heads = train_mlp_heads(x, y, inputs["val"][0], y_val, seeds, cfg)
    with torch.no_grad():
        predictions = heads.shared(params, inputs["test"][0])
    return predictions, best_mae, [{"best_epoch": epoch} for epoch in best_epoch.tolist()]


def fit_krr_heads(x, y, y_val, inputs, seeds, cfg):
    """As fit_mlp_heads, for kernel ridge heads fitted one after the other."""
    predictions, val_mae, columns = [], [], []
    for h in range(len(seeds)):
        model = krr_fit(x[h], y[h], inputs["val"][0], y_val[h], cfg.KRR_WIDTHS, cfg.KRR_RIDGES)
        predictions.append(krr_predict(model, inputs["test"][0]))
        val_mae.append(model["val_mae"])
        columns.append({"krr_width": model["width"], "krr_ridge": model["ridge"]})
    return torch.stack(predictions).to(y.dtype), torch.tensor(val_mae, dtype=y.dtype, device=y.device), columns


FIT_HEADS = {"mlp": fit_mlp_heads, "krr": fit_krr_heads}


def fit_budget(head, n_labels, plan, selections, inputs, cfg, logger):
    """Train and test every (strategy, seed) head of one kind at budget n_labels; one result row each,
    and the test predictions in label units (H, T) as numpy."""
    chosen = torch.stack([selections[strategy, seed, n_labels] for strategy, seed in plan])  # (H, N) pool rows
    x, y, y_val, (y_mean, y_std) = budget_inputs(chosen, inputs)
    start = time.perf_counter()
    predictions, val_mae, columns = FIT_HEADS[head](x, y, y_val, inputs, [seed for _, seed in plan], cfg)
    predictions = (y_mean + y_std * predictions).cpu().numpy()
    val_mae = (y_std[:, 0] * val_mae).tolist()  # label units, on the early-stopping validation structures
    fit_seconds = (time.perf_counter() - start) / len(plan)
    never = [key for key, extra in zip(plan, columns) if extra.get("best_epoch") == 0]
    if never:  # its validation MAE was never finite: an untrained head is no result
        raise InputError(f"N={n_labels}: the heads of {never} diverged from the first epoch (validation MAE never "
                         f"finite); lower MLP_LR={cfg.MLP_LR}")
    y_true = inputs["test"][1].cpu().numpy()
    rows = []
    for (strategy, seed), prediction, extra, head_val_mae in zip(plan, predictions, columns, val_mae):
        m = {**regression_metrics(y_true, prediction), "val_mae": head_val_mae}
        rows.append({"head": head, "strategy": strategy, "n_labels": n_labels, "seed": seed, **m, **extra,
                     "fit_seconds": fit_seconds})
        logger.info("%s N=%5d %-9s seed %d: test MAE %.4g RMSE %.4g R2 %.3f p95 %.4g max %.4g %s", head,
                    n_labels, strategy, seed, m["mae"], m["rmse"], m["r2"], m["p95_abs_error"], m["max_abs_error"],
                    " ".join(f"{key} {value:g}" for key, value in extra.items()))
    return rows, predictions


def label_efficiency(ns, random_mae, target_mae):
    """The budget random selection needs to reach `target_mae`, interpolated in log-log on the mean
    random curve (ns ascending); NaN when the curve does not cross that MAE."""
    log_n, log_mae, target = np.log(ns), np.log(random_mae), np.log(target_mae)
    for i in range(len(ns) - 1):
        high, low = log_mae[i], log_mae[i + 1]
        if high >= target >= low and high > low:
            return float(np.exp(log_n[i] + (high - target) / (high - low) * (log_n[i + 1] - log_n[i])))
    return float("nan")


def holm(p_values):
    """Holm's step-down adjustment of p-values (m,) for m comparisons; NaN entries take no part and stay NaN."""
    p = np.asarray(p_values, dtype=np.float64)
    adjusted = np.full_like(p, np.nan)
    order = [i for i in np.argsort(p, kind="stable") if not np.isnan(p[i])]
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(order) - rank) * p[i]))  # adjusted p-values never decrease
        adjusted[i] = running
    return adjusted


def paired_with_random(results, row, random_curve):
    """Seed-paired MAE difference of one (head, strategy, N) to random, its standard error and
    paired t-test p-value, and the random budget with the same mean MAE."""
    key = ["head", "n_labels", "seed"]
    mine = results[(results["head"] == row.head) & (results["strategy"] == row.strategy)
                   & (results["n_labels"] == row.n_labels)].set_index(key)["mae"]
    theirs = results[results["strategy"] == "random"].set_index(key)["mae"].reindex(mine.index)
    diff = (mine - theirs).dropna().to_numpy()
    n_equivalent = label_efficiency(random_curve.index.to_numpy(), random_curve.to_numpy(), row.mae_mean)
    return {"mae_diff_vs_random": diff.mean() if len(diff) else np.nan,
            "mae_diff_se": diff.std(ddof=1) / np.sqrt(len(diff)) if len(diff) > 1 else np.nan,
            "p_value_paired_t": stats.ttest_1samp(diff, 0.0).pvalue if len(diff) > 1 else np.nan,
            "random_n_equivalent": n_equivalent, "label_efficiency": n_equivalent / row.n_labels}


def summarize(results):
    """Per (head, strategy, N): count, mean and std over seeds of every metric; for strategies other
    than random, the comparison with random of the same head (paired_with_random) and its p-value
    Holm-adjusted over all (strategy, N) comparisons of that head."""
    aggregations = {"n_seeds": ("seed", "size")}
    for metric in METRICS:
        aggregations.update({f"{metric}_mean": (metric, "mean"), f"{metric}_std": (metric, "std")})
    summary = results.groupby(["head", "strategy", "n_labels"]).agg(**aggregations).reset_index()
    paired = []
    for row in summary.itertuples():
        random_curve = summary[(summary["head"] == row.head) & (summary["strategy"] == "random")]
        if row.strategy == "random" or random_curve.empty:
            paired.append({})
            continue
        paired.append(paired_with_random(results, row, random_curve.set_index("n_labels")["mae_mean"]))
    summary = pd.concat([summary, pd.DataFrame(paired, index=summary.index)], axis=1)
    if "p_value_paired_t" in summary:
        summary.insert(summary.columns.get_loc("p_value_paired_t") + 1, "p_holm", np.nan)
        for _, frame in summary.groupby("head"):
            summary.loc[frame.index, "p_holm"] = holm(frame["p_value_paired_t"].to_numpy())
    return summary


def write_csv(frame, path):
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)


def curve_panels(results, ns, metric):
    """{head title: {strategy label: (seeds, len(ns)) values of metric}} for save_learning_curves."""
    return {HEAD_TITLES[head]: {CURVE_LABELS[strategy]: frame.pivot(index="seed", columns="n_labels",
                                                                    values=metric)[ns].to_numpy()
                                for strategy, frame in by_head.groupby("strategy", sort=False)}
            for head, by_head in results.groupby("head", sort=False)}


def reference_panels(references, heads, column):
    """The reference runs' curves of `column` (1: MAE, 2: p95) as save_learning_curves references
    {head title: {(reference label, strategy label): (ns, means)}}. A curve of one of this package's
    heads goes to that head's panel, if the run has it; one of another model (a classical reference)
    goes to every panel."""
    panels = {HEAD_TITLES[head]: {} for head in heads}
    for label, reference in references.items():
        for (ref_head, strategy), curve in reference.items():
            own_head = ref_head in FIT_HEADS
            for head in ([ref_head] if ref_head in heads else []) if own_head else heads:
                if curve[column] is not None:
                    name = label if own_head else f"{label} ({ref_head})"
                    panels[HEAD_TITLES[head]][name, CURVE_LABELS.get(strategy, strategy)] = (curve[0], curve[column])
    return panels


def label_budgets(ns):
    """The one or two budgets whose picks selected_labels.png shows: the largest N <= 100, and the largest N."""
    small = [n for n in ns if n <= 100]
    return sorted({small[-1] if small else ns[0], ns[-1]})


def write_plots(out_dir, results, ns, mean_predictor_mae, reference, parity, picked_labels, y_pool, target):
    """curve_mae.png, curve_p95.png, parity.png and selected_labels.png; target: (name, unit)."""
    heads = list(dict.fromkeys(results["head"]))
    name, unit = target
    save_learning_curves(ns, curve_panels(results, ns, "mae"), out_dir / "curve_mae.png",
                         ylabel=f"test MAE of {name} ({unit})", references=reference_panels(reference, heads, 1),
                         hline=(mean_predictor_mae, f"predict the train mean ({mean_predictor_mae:.4g} {unit})"))
    save_learning_curves(ns, curve_panels(results, ns, "p95_abs_error"), out_dir / "curve_p95.png",
                         ylabel=f"95th percentile of the test |error| of {name} ({unit})",
                         references=reference_panels(reference, heads, 2))
    save_parity({f"{HEAD_TITLES[head]}, N = {ns[-1]}": {CURVE_LABELS[strategy]: pair
                                                        for (h, strategy), pair in parity.items() if h == head}
                 for head in heads}, out_dir / "parity.png", name=name, unit=unit)
    save_label_histograms(y_pool, {f"N = {n}, all seeds": {CURVE_LABELS[strategy]: values
                                                           for (strategy, budget), values in picked_labels.items()
                                                           if budget == n}
                                   for n in label_budgets(ns)}, out_dir / "selected_labels.png", name=name, unit=unit)


def write_outputs(out_dir, results, summary):
    """results_<strategy>.csv (the spec's names for random and k-center), results_all.csv, summary.csv."""
    for strategy, frame in results.groupby("strategy"):
        write_csv(frame, out_dir / RESULT_FILES.get(strategy, f"results_{strategy}.csv"))
    write_csv(results, out_dir / "results_all.csv")
    write_csv(summary, out_dir / "summary.csv")


def experiment_inputs(arrays, cfg, device):
    """Head inputs {"pool", "val", "test": (x (rows, d), y (rows,))}, with x the latents standardized
    by the (unlabelled) pool and "val" the early-stopping subset."""
    pool = torch.as_tensor(arrays["idx_train"], device=device)
    val_rows = arrays["idx_val"]
    if cfg.MLP_VAL_SIZE is not None and cfg.MLP_VAL_SIZE < len(val_rows):
        val_rows = np.random.default_rng(cfg.SEED).choice(val_rows, cfg.MLP_VAL_SIZE, replace=False)
    z_all = torch.as_tensor(arrays["z_all"], dtype=torch.float32, device=device)
    y_all = torch.as_tensor(arrays["y_all"], dtype=torch.float32, device=device)
    x_all = standardized_latents(z_all, pool)
    splits = {"pool": pool, "val": torch.as_tensor(val_rows, device=device),
              "test": torch.as_tensor(arrays["idx_test"], device=device)}
    return {name: (x_all[rows], y_all[rows]) for name, rows in splits.items()}


def run_experiment(cfg, arrays, ns, out_dir, device, logger, reference=None):
    """Selections, one batched fit per head kind and budget, statistics and outputs, for checked
    latents and budgets; the time of each stage goes to the log."""
    clock = time.perf_counter()
    inputs = experiment_inputs(arrays, cfg, device)
    z_select = selection_latents(arrays, cfg, device)
    y_pool, y_test = inputs["pool"][1], inputs["test"][1]
    target, unit = arrays["target_name"], arrays["target_unit"]
    logger.info("latents: %d structures, dim %d; pool %d, early-stopping val %d, test %d; budgets %s; heads %s; "
                "target %s (%s)", len(arrays["z_all"]), z_select.shape[1], len(y_pool), len(inputs["val"][1]),
                len(y_test), ns, cfg.HEAD, target, unit)
    plan = [(strategy, seed) for strategy in cfg.SAMPLING_STRATEGIES for seed in cfg.SAMPLING_SEEDS]
    selections = select_all(selection.Selector(z_select, cfg), plan, ns, arrays["idx_train"], out_dir, logger)
    check_label_spread(selections, y_pool)
    logger.info("stage selection: %.1f s", time.perf_counter() - clock)
    mean_predictor_mae = mae(y_test, torch.full_like(y_test, float(y_pool.mean())))
    logger.info("predicting the train-pool mean gives test MAE %.4g %s", mean_predictor_mae, unit)
    rows, parity = [], {}
    for head in cfg.HEAD:
        stage = time.perf_counter()
        for n_labels in tqdm(ns, desc=f"{head} budgets", disable=None):
            budget_rows, predictions = fit_budget(head, n_labels, plan, selections, inputs, cfg, logger)
            rows += budget_rows
        parity.update({(head, strategy): (y_test.cpu().numpy(), prediction)
                       for (strategy, seed), prediction in zip(plan, predictions) if seed == cfg.SAMPLING_SEEDS[0]})
        logger.info("stage %s heads: %.1f s", head, time.perf_counter() - stage)
    stage = time.perf_counter()
    results = pd.DataFrame(rows)
    summary = summarize(results)
    logger.info("summary (MAE in %s; diff = strategy - random of the same head, paired by seed):\n%s", unit,
                summary.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    write_outputs(out_dir, results, summary)
    picked_labels = {(strategy, n): torch.cat([y_pool[selections[strategy, seed, n]]
                                               for seed in cfg.SAMPLING_SEEDS]).cpu().numpy()
                     for strategy in cfg.SAMPLING_STRATEGIES for n in label_budgets(ns)}
    write_plots(out_dir, results, ns, mean_predictor_mae, reference or {}, parity, picked_labels, y_pool.cpu().numpy(),
                (target, unit))
    logger.info("stage statistics and outputs: %.1f s", time.perf_counter() - stage)
    logger.info("wrote results to %s; total %.1f s", out_dir, time.perf_counter() - clock)


# --- selection only ------------------------------------------------------------------

def check_selection_request(args, cfg, arrays):
    """The strategy, budget and warm-start pool rows of a --select run, before any output exists."""
    check_names("strategy", [args.select], STRATEGIES)
    if "structure_index" not in arrays:
        raise InputError("the latents npz has no structure_index, which --select needs to name the structures")
    labelled = read_labelled(args.labelled, arrays) if args.labelled else np.zeros(0, dtype=np.int64)
    free = len(arrays["idx_train"]) - len(labelled)
    if args.budget is None or not 1 <= args.budget <= free:
        raise InputError(f"--budget {args.budget}: expected 1..{free}, the pool molecules not labelled yet")
    return labelled


def describe_picks(z_pool, picks, labelled, logger):
    """Log where the picks lie in the pool's latent space: distance to the pool centre as a pool
    percentile (a typical molecule sits at 50, an outlier near 100), and how far pool molecules are
    from their nearest labelled one (labelled before or picked now)."""
    to_centre = (z_pool - z_pool.mean(dim=0)).norm(dim=1)
    percentile = 100.0 * (to_centre[None, :] < to_centre[picks][:, None]).double().mean(dim=1)
    known = torch.cat([torch.as_tensor(labelled, dtype=torch.long, device=z_pool.device), picks])
    coverage = torch.cat([selection.nearest_distance(rows, z_pool[known])
                          for rows in z_pool.split(selection.ROW_CHUNK)])
    logger.info("picks' distance to the pool's latent centre: median at pool percentile %.0f (10%%-90%% of "
                "picks: %.0f-%.0f); pool distance to the nearest labelled molecule: mean %.3f, max %.3f "
                "(standardized latent units)", float(percentile.median()), float(percentile.quantile(0.1)),
                float(percentile.quantile(0.9)), float(coverage.mean()), float(coverage.max()))


def run_selection(args, cfg, arrays, labelled, out_dir, device, logger):
    """Pick --budget pool molecules with --select after the `labelled` pool rows; write to_label.csv."""
    start = time.perf_counter()
    z_pool = selection_latents(arrays, cfg, device)
    picks = selection.Selector(z_pool, cfg)(args.select, args.budget, args.seed, labelled)
    logger.info("picked %d of %d pool molecules (%d labelled before) with %s, seed %d, in %.2f s", args.budget,
                len(z_pool), len(labelled), args.select, args.seed, time.perf_counter() - start)
    describe_picks(z_pool, picks, labelled, logger)
    pool_rows = picks.cpu().numpy()
    npz_rows = arrays["idx_train"][pool_rows]
    names = {"structure_name": arrays["structure_name"][npz_rows]} if "structure_name" in arrays else {}
    write_csv(pd.DataFrame({"rank": np.arange(1, len(pool_rows) + 1),
                            "structure_index": arrays["structure_index"][npz_rows], **names,
                            "pool_row": pool_rows, "npz_row": npz_rows}), out_dir / "to_label.csv")
    logger.info("wrote %s", out_dir / "to_label.csv")


def main(argv=None):
    args = parse_args(argv)
    cfg = config_from_args(args)
    arrays = load_latents(args.latents)  # every input is checked before the run folder exists
    if args.select is not None:
        labelled = check_selection_request(args, cfg, arrays)
        device = get_device(args.device)
        out_dir = args.out_dir or default_run_dir(cfg, "selection")
        with run_folder(out_dir):
            logger = start_run(cfg, out_dir, "selection", "selection.log", latents=str(args.latents),
                               strategy=args.select, budget=args.budget, seed=args.seed,
                               labelled=str(args.labelled) if args.labelled else None)
            run_selection(args, cfg, arrays, labelled, out_dir, device, logger)
        return
    ns = check_plan(cfg, len(arrays["idx_train"]))
    reference = load_references(args.reference)
    device = get_device(args.device)
    out_dir = args.out_dir or default_run_dir(cfg, "sampling")
    with run_folder(out_dir):
        logger = start_run(cfg, out_dir, "sampling", "sampling.log", latents=str(args.latents),
                           reference=args.reference)
        run_experiment(cfg, arrays, ns, out_dir, device, logger, reference)


if __name__ == "__main__":
    run_cli(main)
