"""How a head's predictions are judged: test metrics, the comparison of each strategy with random
selection paired by seed, Holm's adjustment, label efficiency, and the summary over seeds."""
import numpy as np
import pandas as pd
import torch
from scipy import stats

from heads import HEADS
from selection import STRATEGIES
from utils import InputError


def _as_float64(x):
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
    return np.asarray(x, dtype=np.float64)


def mae(y_true, y_pred):
    return float(np.mean(np.abs(_as_float64(y_true) - _as_float64(y_pred))))


def rmse(y_true, y_pred):
    return float(np.sqrt(np.mean((_as_float64(y_true) - _as_float64(y_pred)) ** 2)))


def r2(y_true, y_pred):
    y_true, y_pred = _as_float64(y_true), _as_float64(y_pred)
    residual = np.sum((y_true - y_pred) ** 2)
    total = np.sum((y_true - y_true.mean()) ** 2)
    return float(1.0 - residual / total)

METRICS = ("mae", "rmse", "r2", "p95_abs_error", "max_abs_error", "val_mae")  # val_mae: what to choose by


def regression_metrics(y_true, y_pred):
    """Test metrics in label units of one head: the bulk (MAE, RMSE, R2) and the tail (95th percentile and
    maximum of the absolute error)."""
    error = np.abs(np.asarray(y_true, dtype=np.float64) - np.asarray(y_pred, dtype=np.float64))
    return {"mae": mae(y_true, y_pred), "rmse": rmse(y_true, y_pred), "r2": r2(y_true, y_pred),
            "p95_abs_error": float(np.percentile(error, 95)), "max_abs_error": float(error.max())}


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
