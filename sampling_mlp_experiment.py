"""Which structures to label? Selection strategies on the encoder latents against random choice.

For every seed and strategy (selection.py, label-free; adaptive.py, in rounds that read the labels of
the rounds before), structures are picked from the training pool of a latents
file (latents_qm9.npz, latents_coremof.npz) at every budget N (nested strategies: the first N picks
of one run to the largest N). Their labels (the property the npz names, HOMO in eV for QM9) fit
fresh heads: a ResidualMLP and kernel ridge regression. By default (HEAD_TUNING="labels") each head
is tuned on its N labels alone: the MLP's epoch count by k-fold cross-validation, the kernel's width
and ridge by leave-one-out error; HEAD_TUNING="validation" tunes both on labelled validation
molecules instead. Both are scored on the test split. All MLP heads of one N train together (vmap over stacked
parameters), each as it would alone, to rounding. Outputs: per-strategy and combined CSVs, summary.csv
with paired, Holm-adjusted statistics per head, learning curves, parity and selected-label plots.

    python sampling_mlp_experiment.py --latents runs/quick/latents_qm9.npz --out-dir runs/quick/sampling

With --select, it trains nothing: it picks --budget structures to label next with one strategy, after
the structures of --labelled (the dataset's structure index values), and writes to_label.csv. With
--select adaptive, one round: the labels of the --labelled structures choose the kernel.

    python sampling_mlp_experiment.py --latents runs/quick/latents_qm9.npz --select typiclust --budget 100
"""
import argparse
import csv
import json
import math
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

import adaptive
import selection
from cli import (add_run_arguments, check_new_run_dir, check_seed, default_run_dir, overrides_from_args, resolve_config,
                 run_cli, run_folder, start_run)
from evaluation import check_names, check_plan, mae, regression_metrics, summarize
from heads import FIT_HEADS, HEADS, budget_inputs, check_kernel_width, check_krr_memory
from latents import load_latents
from plots import label_budgets, write_plots
from selection import selection_latents, standardized_latents
from utils import InputError, atomic_path, get_device, write_csv

RESULT_FILES = {"random": "results_random.csv", "kcenter": "results_latent.csv"}  # the others: results_<name>.csv
FROM_LATENTS = "from-latents"  # --labelled: the latents' own labels are the warm start
LABEL_COLUMN = "label"  # the column of a --labelled CSV that holds the labels, for --select adaptive


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--latents", type=Path, required=True,
                        help="latents_<dataset>.npz from train_encoder_qm9.py or export_pretrained_latents.py")
    parser.add_argument("--strategies", nargs="+", help=f"override SAMPLING_STRATEGIES, from {adaptive.STRATEGIES}")
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
    chooser.add_argument("--select", metavar="STRATEGY",
                         help=f"only pick molecules to label, with one of {adaptive.STRATEGIES}")
    chooser.add_argument("--budget", type=int, help="how many molecules --select picks")
    chooser.add_argument("--labelled", type=Path,
                         help="structures labelled already: a text file of structure index values (QM9 Index), "
                              "one a line, or a CSV with a structure_index column (such as an earlier to_label.csv), "
                              f"and for {adaptive.NAME} a column of their labels ({LABEL_COLUMN}, or named as the "
                              f"latents' property); {FROM_LATENTS}: the pool structures that have a label in a "
                              "structure file's latents")
    chooser.add_argument("--seed", type=int, help=f"seed of the --select strategy (default {SELECT_SEED}; "
                                                  f"{adaptive.NAME} has no random choice)")
    add_run_arguments(parser)
    return parser.parse_args(argv)


SELECT_SEED = 0  # the --select strategy's seed when --seed is not given
EXPERIMENT_ONLY = ("strategies", "heads", "seeds", "ns", "mlp_hidden_dim", "mlp_layers", "mlp_lr", "mlp_epochs",
                   "reference")
SELECTION_ONLY = ("budget", "labelled", "seed")


def check_mode(args):
    """An option that does nothing in the mode chosen is an error: an experiment option with
    --select, --budget, --labelled or --seed without it. --seed is a seed like SAMPLING_SEEDS."""
    selecting = args.select is not None
    given = [name for name in (EXPERIMENT_ONLY if selecting else SELECTION_ONLY) if getattr(args, name) is not None]
    if given:
        flags = " ".join(f"--{name.replace('_', '-')}" for name in given)
        raise InputError(f"{flags}: not used by --select, which trains no heads" if selecting else
                         f"{flags}: used only with --select; the experiment takes SAMPLING_SEEDS and SAMPLING_NS")
    if args.seed is not None:
        check_seed("--seed", args.seed)


def config_from_args(args):
    check_mode(args)
    flags = {"SAMPLING_STRATEGIES": args.strategies, "SAMPLING_SEEDS": args.seeds, "SAMPLING_NS": args.ns,
             "HEAD": args.heads, "MLP_HIDDEN_DIM": args.mlp_hidden_dim, "MLP_LAYERS": args.mlp_layers,
             "MLP_LR": args.mlp_lr, "MLP_EPOCHS": args.mlp_epochs}
    return resolve_config(overrides_from_args(flags, args.set))


# --- input validation --------------------------------------------------------------


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
    check_reference(summary, path)
    curves = {}
    for (head, strategy), frame in summary.sort_values("n_labels").groupby(["head", "strategy"]):
        p95 = frame["p95_abs_error_mean"].to_numpy() if "p95_abs_error_mean" in frame else None
        curves[head, strategy] = (frame["n_labels"].to_numpy(), frame["mae_mean"].to_numpy(), p95)
    return curves


def check_reference(summary, path):
    """Every row of a reference summary names its head and strategy once per budget, with a positive
    integer n_labels (made int64) and finite, non-negative MAE (and p95) means."""
    for column in ("head", "strategy"):
        if summary[column].isna().any():
            raise InputError(f"{path}: reference summary line {int(summary[column].isna().argmax()) + 2} has no "
                             f"{column}; expected one on every line")
    for column, integral in (("n_labels", True), ("mae_mean", False), ("p95_abs_error_mean", False)):
        if column not in summary:
            continue
        values = pd.to_numeric(summary[column], errors="coerce").to_numpy(dtype=np.float64)  # text: NaN
        bad = ~np.isfinite(values) | (values < (1 if integral else 0)) | (integral & (values != np.round(values)))
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            expected = "a positive integer" if integral else "a finite, non-negative number"
            raise InputError(f"{path}: reference summary line {row + 2} has {column} "
                             f"{summary[column].astype(str).iloc[row]!r}; expected {expected}")
        summary[column] = values.astype(np.int64) if integral else values
    twice = summary.duplicated(["head", "strategy", "n_labels"])
    if twice.any():
        row = summary[twice].iloc[0]
        raise InputError(f"{path}: reference summary lists head {row['head']}, strategy {row['strategy']}, n_labels "
                         f"{row['n_labels']} twice; expected one row each")


def parse_number(text):
    """The number `text` holds: an int ("130745"), else a float ("130745.0", "7.5"), else None."""
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return None


def labelled_table(path):
    """The header (cells, or None without one) and the non-blank lines [(line number, cells)] of a
    --labelled file. A header is a first line whose first cell is no number; a UTF-8 byte-order mark
    is taken."""
    try:
        text = Path(path).read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(f"{path}: labelled-molecules file not readable ({err})") from None
    reader = csv.reader(text.splitlines())
    rows = [(reader.line_num, [cell.strip() for cell in row]) for row in reader if "".join(row).strip()]
    header = rows.pop(0)[1] if rows and parse_number(rows[0][1][0]) is None else None
    return header, rows


def labelled_values(path):
    """The structure index values of a --labelled file: one a line, or a CSV whose header names a
    structure_index (or, from older runs, qm9_index) column, such as to_label.csv. Integral floats
    (130745.0) are taken; a line without such a value is named."""
    header, rows = labelled_table(path)
    column, name = 0, None
    if header is not None:
        found = [known for known in ("structure_index", "qm9_index") if known in header]  # to_label.csv, then older
        if not found:
            raise InputError(f"{path}: expected a structure_index column or one structure index value a line")
        name = found[0]
        column = header.index(name)
    values = []
    for line, row in rows:
        if name is None and len(row) > 1:
            raise InputError(f"{path}: line {line} holds {len(row)} values; expected one structure index value a "
                             "line, or a header naming a structure_index column")
        if len(row) <= column:
            raise InputError(f"{path}: line {line} has {len(row)} columns; expected {name} in column {column + 1}")
        value = parse_number(row[column])
        if value is None or not (isinstance(value, int) or value.is_integer()) or abs(value) >= 2**63:
            raise InputError(f"{path}: line {line}: {row[column]!r} is not a structure index value (an integer)")
        values.append(int(value))
    return np.array(values, dtype=np.int64)


def labelled_labels(path, target_name):
    """The labels (L,) float64 of the structures of a --labelled CSV, in its order: its label column,
    else the one named as the latents' property (target_name). Every line needs a finite number."""
    header, rows = labelled_table(path)
    found = [name for name in (LABEL_COLUMN, target_name) if name in (header or [])]
    if not found:
        raise InputError(f"{path}: --select {adaptive.NAME} needs the labels of the labelled structures, in a CSV "
                         f"column named {LABEL_COLUMN} or {target_name}; found {header or 'no header'}")
    name, column = found[0], header.index(found[0])
    labels = []
    for line, row in rows:
        text = row[column] if column < len(row) else ""
        if not text:
            raise InputError(f"{path}: line {line} has no {name} value; expected a finite number")
        value = parse_number(text)
        if value is None or not math.isfinite(value):
            raise InputError(f"{path}: line {line} has {name} {text!r}; expected a finite number")
        labels.append(float(value))
    return np.array(labels, dtype=np.float64)


def read_labelled(path, arrays):
    """Pool rows (positions in idx_train) of the structure index values in `path` (labelled_values),
    checked: every value a structure of the pool (arrays has structure_index), none twice."""
    wanted = labelled_values(path)
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


def nested_order(selector, y_pool, strategy, n, seed, logger):
    """The first n picks (n,) of a nested strategy; adaptive (whose rounds sum to n) reads the pool labels
    y_pool (n_pool,) and logs the kernel that each round after the first chose."""
    if strategy != adaptive.NAME:
        return selector(strategy, n, seed)
    order, _, fits = adaptive.adaptive_selection(selector.z, y_pool, seed, selector.cfg)
    logger.info("adaptive seed %d: kernel width (median distances) / noise chosen by leave-one-out for each round "
                "after the first: %s", seed, ", ".join(f"{fit['width']:g}/{fit['ridge']:g}" for fit in fits))
    return order


def select_all(selector, y_pool, plan, ns, pool_rows, out_dir, logger):
    """Picks {(strategy, seed, N): pool rows (N,)} for every budget: one run to the largest N for a
    nested strategy, one per N otherwise; adaptive reads the pool labels y_pool (n,) of the rows of its
    earlier rounds. The picks of the largest N are also saved as npz rows."""
    selections = {}
    for strategy, seed in plan:
        start = time.perf_counter()
        if adaptive.NESTED[strategy]:
            order = nested_order(selector, y_pool, strategy, ns[-1], seed, logger)
            selections.update({(strategy, seed, n): order[:n] for n in ns})
        else:
            selections.update({(strategy, seed, n): selector(strategy, n, seed) for n in ns})
        with atomic_path(out_dir / f"selected_{strategy}_seed{seed}.npy") as tmp, open(tmp, "wb") as f:
            np.save(f, pool_rows[selections[strategy, seed, ns[-1]].cpu().numpy()])
        logger.info("selected %s with %s, seed %d, in %.2f s", ns if not adaptive.NESTED[strategy] else ns[-1],
                    strategy, seed, time.perf_counter() - start)
    return selections


def check_label_spread(selections, inputs, cfg):
    """Before any training: every selection's labels vary, or its head has nothing to fit, and for
    kernel ridge heads its latents have a nonzero median distance (heads.check_kernel_width)."""
    x_pool, y_pool = inputs["pool"]
    for (strategy, seed, n), rows in sorted(selections.items(), key=lambda item: item[0][2]):
        if float(y_pool[rows].std()) == 0:
            raise InputError(f"{strategy} seed {seed}: the {n} selected molecules all have the same label, so a "
                             "head has nothing to fit")
        if "krr" in cfg.HEAD:
            check_kernel_width(x_pool[rows], f"{strategy} seed {seed}, N={n}")


# --- the experiment ----------------------------------------------------------------


def fit_budget(head, n_labels, plan, selections, inputs, cfg, logger):
    """Train and test every (strategy, seed) head of one kind at budget n_labels; one result row each,
    and the test predictions in label units (H, T) as numpy."""
    chosen = torch.stack([selections[strategy, seed, n_labels] for strategy, seed in plan])  # (H, N) pool rows
    x, y, y_val, (y_mean, y_std) = budget_inputs(chosen, inputs)
    start = time.perf_counter()
    predictions, val_mae, columns = FIT_HEADS[head](x, y, (inputs["val"][0], y_val), inputs["test"][0],
                                                    [seed for _, seed in plan], cfg)
    predictions = (y_mean + y_std * predictions).cpu().numpy()
    val_mae = (y_std[:, 0] * val_mae).tolist()  # label units, on the MLP_VAL_SIZE validation structures
    fit_seconds = (time.perf_counter() - start) / len(plan)
    never = [key for key, extra in zip(plan, columns) if extra.get("best_epoch") == 0]
    if never:  # its validation MAE was never finite: an untrained head is no result
        raise InputError(f"N={n_labels}: the heads of {never} diverged from the first epoch (tuning MAE never "
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


def write_outputs(out_dir, results, summary):
    """results_<strategy>.csv (results_latent.csv for k-center, a name older runs share), results_all.csv,
    summary.csv."""
    for strategy, frame in results.groupby("strategy"):
        write_csv(frame, out_dir / RESULT_FILES.get(strategy, f"results_{strategy}.csv"))
    write_csv(results, out_dir / "results_all.csv")
    write_csv(summary, out_dir / "summary.csv")


def experiment_inputs(arrays, cfg, device):
    """Head inputs {"pool", "val", "test": (x (rows, d), y (rows,))}, with x the latents standardized
    by the (unlabelled) pool and "val" the MLP_VAL_SIZE validation subset (val_mae; the tuning set
    only under HEAD_TUNING="validation")."""
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


def latent_source(arrays):
    """What the latents are, as their npz says; "unknown" for files from before it said so."""
    return str(arrays.get("latent_source", "unknown"))


def latents_provenance(arrays):
    """run_info.json entries: the latents' source, and the commit and dirty flag of the tree that wrote
    them, from the npz's config ("unknown" for files from before it recorded them)."""
    try:
        writer = json.loads(str(arrays.get("config", "{}")))
    except json.JSONDecodeError:
        writer = {}
    writer = writer if isinstance(writer, dict) else {}
    return {"latent_source": latent_source(arrays), "latents_git_commit": writer.get("git_commit", "unknown"),
            "latents_git_dirty": writer.get("git_dirty", "unknown")}


def head_plan(plan, head, cfg):
    """The (strategy, seed) pairs of `plan` that heads of kind `head` fit: for MLP heads, the costly kind,
    those of the first MLP_SEED_COUNT of SAMPLING_SEEDS; for KRR heads all of them."""
    seeds = cfg.SAMPLING_SEEDS[:cfg.MLP_SEED_COUNT] if head == "mlp" else cfg.SAMPLING_SEEDS
    return [(strategy, seed) for strategy, seed in plan if seed in seeds]


def run_experiment(cfg, arrays, ns, out_dir, device, logger, reference=None):
    """Selections, one batched fit per head kind and budget, statistics and outputs, for checked
    latents and budgets; the time of each stage goes to the log."""
    clock = time.perf_counter()
    inputs = experiment_inputs(arrays, cfg, device)
    z_select = selection_latents(arrays, cfg, device)
    y_pool, y_test = inputs["pool"][1], inputs["test"][1]
    target, unit = arrays["target_name"], arrays["target_unit"]
    logger.info("latents: %d structures, dim %d, %s; pool %d, val %d, test %d; budgets %s; heads %s tuned on %s; "
                "target %s (%s)", len(arrays["z_all"]), z_select.shape[1], latent_source(arrays), len(y_pool),
                len(inputs["val"][1]), len(y_test), ns, cfg.HEAD, cfg.HEAD_TUNING, target, unit)
    plan = [(strategy, seed) for strategy in cfg.SAMPLING_STRATEGIES for seed in cfg.SAMPLING_SEEDS]
    y_labels = torch.as_tensor(arrays["y_all"][arrays["idx_train"]], device=device)  # float64, for adaptive
    selections = select_all(selection.Selector(z_select, cfg), y_labels, plan, ns, arrays["idx_train"], out_dir,
                            logger)
    check_label_spread(selections, inputs, cfg)
    logger.info("stage selection: %.1f s", time.perf_counter() - clock)
    mean_predictor_mae = mae(y_test, torch.full_like(y_test, float(y_pool.mean())))
    logger.info("predicting the train-pool mean gives test MAE %.4g %s", mean_predictor_mae, unit)
    rows, parity = [], {}
    for head in cfg.HEAD:
        stage = time.perf_counter()
        fitted = head_plan(plan, head, cfg)
        for n_labels in tqdm(ns, desc=f"{head} budgets", disable=None):
            budget_rows, predictions = fit_budget(head, n_labels, fitted, selections, inputs, cfg, logger)
            rows += budget_rows
        parity.update({(head, strategy): (y_test.cpu().numpy(), prediction)
                       for (strategy, seed), prediction in zip(fitted, predictions) if seed == cfg.SAMPLING_SEEDS[0]})
        logger.info("stage %s heads: %.1f s", head, time.perf_counter() - stage)
    stage = time.perf_counter()
    results = pd.DataFrame(rows)
    summary = summarize(results)
    summary.insert(0, "latent_source", latent_source(arrays))
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
    """The strategy, budget and warm-start pool rows (L,) of a --select run, and for adaptive their labels
    (L,) (None for the label-free strategies), before any output exists."""
    check_names("strategy", [args.select], adaptive.STRATEGIES)
    if "structure_index" not in arrays:
        raise InputError("the latents npz has no structure_index, which --select needs to name the structures")
    with_labels = args.select == adaptive.NAME
    if with_labels and args.seed is not None:
        raise InputError(f"--seed: not used by --select {adaptive.NAME}, whose picks follow from the labels alone")
    if with_labels and args.labelled is None:
        raise InputError(f"--select {adaptive.NAME}: needs the labels of the structures labelled so far; give "
                         f"--labelled FILE with a {LABEL_COLUMN} column, or --labelled {FROM_LATENTS}")
    if str(args.labelled) == FROM_LATENTS:
        labelled = labelled_in_latents(args.latents, arrays)
        labels, source = arrays["y_all"][arrays["idx_train"][labelled]], args.latents
    elif args.labelled:
        labelled = read_labelled(args.labelled, arrays)
        labels = labelled_labels(args.labelled, arrays["target_name"]) if with_labels else None
        source = args.labelled
    else:
        labelled, labels = np.zeros(0, dtype=np.int64), None
    if with_labels:
        adaptive.check_labels(labels, source)
    free = len(arrays["idx_train"]) - len(labelled)
    if args.budget is None or not 1 <= args.budget <= free:
        raise InputError(f"--budget {args.budget}: expected 1..{free}, the pool molecules not labelled yet")
    return labelled, labels if with_labels else None


def labelled_in_latents(path, arrays):
    """Pool rows of the structures that have a label in a structure file's latents."""
    if "labelled" not in arrays:
        raise InputError(f"--labelled {FROM_LATENTS}: {path} has no labelled key; only the latents of a structure "
                         "file say which structures have a label")
    return np.flatnonzero(arrays["labelled"][arrays["idx_train"]])


def require_labels(path, arrays):
    """The experiment fits heads on labels: every structure needs one."""
    if "labelled" in arrays and not arrays["labelled"].all():
        missing = arrays["structure_index"][~arrays["labelled"]].tolist()
        shown = ", ".join(map(str, missing[:5])) + (", ..." if len(missing) > 5 else "")
        raise InputError(f"{path}: the experiment needs a {arrays['target_name']} label for every structure; "
                         f"{len(missing)} of {len(arrays['labelled'])} have none (structure_index {shown}); "
                         "--select picks which to label")


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


def scored_picks(strategy, z_pool, budget, seed, labelled, labels, cfg, logger):
    """The picks (budget,) of `strategy` after the `labelled` pool rows (L,), and for gp_variance and adaptive
    the posterior variance of each when it was picked (budget,), else None. adaptive fits its kernel to
    the labels (L,) and logs it."""
    if strategy == adaptive.NAME:
        labelled = torch.as_tensor(labelled, device=z_pool.device)
        picks, variance, fit = adaptive.labelled_round(z_pool, labelled, torch.as_tensor(labels, device=z_pool.device),
                                                       budget, cfg, f"{len(labelled)} labelled structures")
        logger.info("adaptive: kernel width %g median distances of the %d labelled structures, noise %g, chosen by "
                    "their leave-one-out MAE %.4g (standardized labels)", fit["width"], len(labelled), fit["ridge"],
                    fit["loo_mae"])
        return picks, variance
    if strategy == "gp_variance":
        return selection.gp_variance(z_pool, budget, seed, cfg.GP_WIDTH, cfg.GP_NOISE, labelled, cfg.GP_SCORE)
    return selection.Selector(z_pool, cfg)(strategy, budget, seed, labelled), None


def run_selection(args, cfg, arrays, labelled, labels, seed, out_dir, device, logger):
    """Pick --budget pool molecules with --select and `seed` after the `labelled` pool rows (adaptive: fitted
    to their `labels`); write to_label.csv."""
    start = time.perf_counter()
    z_pool = selection_latents(arrays, cfg, device)
    picks, score = scored_picks(args.select, z_pool, args.budget, seed, labelled, labels, cfg, logger)
    logger.info("picked %d of %d pool molecules (%d labelled before) with %s, seed %s, in %.2f s", args.budget,
                len(z_pool), len(labelled), args.select, seed, time.perf_counter() - start)
    describe_picks(z_pool, picks, labelled, logger)
    pool_rows = picks.cpu().numpy()
    npz_rows = arrays["idx_train"][pool_rows]
    names = {"structure_name": arrays["structure_name"][npz_rows]} if "structure_name" in arrays else {}
    scores = {} if score is None else {"score": score.cpu().numpy()}
    write_csv(pd.DataFrame({"rank": np.arange(1, len(pool_rows) + 1),
                            "structure_index": arrays["structure_index"][npz_rows], **names,
                            "pool_row": pool_rows, "npz_row": npz_rows, **scores}), out_dir / "to_label.csv")
    logger.info("wrote %s", out_dir / "to_label.csv")


def main(argv=None):
    args = parse_args(argv)
    cfg = config_from_args(args)
    arrays = load_latents(args.latents)  # every input is checked before the run folder exists
    selection.check_selection_dim(cfg.SELECTION_DIM, arrays["z_all"].shape[1])
    selection.check_gp_score(cfg.GP_SCORE)
    if args.select is not None:
        labelled, labels = check_selection_request(args, cfg, arrays)
        seed = None if args.select == adaptive.NAME else SELECT_SEED if args.seed is None else args.seed
        device = get_device(args.device)
        out_dir = args.out_dir or default_run_dir(cfg, "selection")
        check_new_run_dir(out_dir)
        with run_folder(out_dir):
            logger = start_run(cfg, out_dir, "selection", "selection.log", latents=str(args.latents),
                               strategy=args.select, budget=args.budget, seed=seed,
                               labelled=str(args.labelled) if args.labelled else None)
            run_selection(args, cfg, arrays, labelled, labels, seed, out_dir, device, logger)
        return
    require_labels(args.latents, arrays)
    ns = check_plan(cfg, len(arrays["idx_train"]))
    reference = load_references(args.reference)
    device = get_device(args.device)
    if "krr" in cfg.HEAD:
        check_krr_memory(max(ns), device)
    out_dir = args.out_dir or default_run_dir(cfg, "sampling")
    check_new_run_dir(out_dir)
    with run_folder(out_dir):
        logger = start_run(cfg, out_dir, "sampling", "sampling.log", latents=str(args.latents),
                           **latents_provenance(arrays), reference=args.reference)
        run_experiment(cfg, arrays, ns, out_dir, device, logger, reference)


if __name__ == "__main__":
    run_cli(main)
