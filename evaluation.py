"""How a head's predictions are judged: test metrics, the comparison of each strategy with random
selection paired by seed, Holm's adjustment, label efficiency, and the summary over seeds."""
import numpy as np
import pandas as pd
import torch
from scipy import stats

import adaptive
from heads import HEADS, TUNINGS
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


def equivalent_budgets(ns, random_mae, target):
    """For each curve b of random_mae (B, K) over budgets ns (K,) ascending, the budget where it first
    falls through target[b] (B,), interpolated in log-log; NaN where it never does. (B,)"""
    if len(ns) < 2:  # one budget: no segment to cross
        return np.full(len(target), np.nan)
    log_n, log_mae, target = np.log(ns), np.log(random_mae), np.log(target)[:, None]
    high, low = log_mae[:, :-1], log_mae[:, 1:]
    crosses = (high >= target) & (target >= low) & (high > low)
    i = crosses.argmax(axis=1)  # the first crossing segment
    high, low, rows = high[np.arange(len(i)), i], low[np.arange(len(i)), i], np.arange(len(i))
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):  # rows without a crossing, NaN below
        budget = np.exp(log_n[i] + (high - target[rows, 0]) / (high - low) * (log_n[i + 1] - log_n[i]))
    return np.where(crosses.any(axis=1), budget, np.nan)


def label_efficiency(ns, random_mae, target_mae):
    """The budget random selection needs to reach `target_mae`, interpolated in log-log on the mean
    random curve (ns ascending); NaN when the curve does not cross that MAE."""
    return float(equivalent_budgets(ns, np.asarray(random_mae)[None], np.array([target_mae]))[0])


def random_equivalent(ns, random_mae, target_mae):
    """label_efficiency's budget with its relation: (budget, "="), or the bound where the MAE lies
    outside the random curve: (ns[-1], ">") when random never gets that low, (ns[0], "<") when
    random is better already at its smallest budget; (NaN, "") for a random curve that rises
    and never crosses it."""
    budget = label_efficiency(ns, random_mae, target_mae)
    if not np.isnan(budget):
        return budget, "="
    if target_mae < np.min(random_mae):
        return float(ns[-1]), ">"
    if target_mae > random_mae[0]:
        return float(ns[0]), "<"
    return float("nan"), ""


BOOTSTRAP_RESAMPLES = 2000  # percentile intervals need 1,000 or more (Efron and Tibshirani 1993, ch. 19); 2,000
# resamples cost well under a second per summary
BOOTSTRAP_SEED = 0  # the resampling is seeded, so a summary repeats byte for byte


def efficiency_interval(ns, random_by_seed, mine_by_seed, n_labels):
    """95% percentile bootstrap interval of label efficiency over seeds: resample the seeds with
    replacement, BOOTSTRAP_RESAMPLES times, keeping each strategy's run paired with random's of the
    same seed; random_by_seed (S, K) over ns, mine_by_seed (S,). A resample whose MAE lies outside
    the random curve counts at the bound (ns[0] or ns[-1]) / n_labels, so an end at ns[-1] / n_labels
    reads "at least". Returns (low, high); NaN with fewer than 2 seeds."""
    if len(mine_by_seed) < 2:
        return float("nan"), float("nan")
    draws = np.random.default_rng(BOOTSTRAP_SEED).integers(len(mine_by_seed), size=(BOOTSTRAP_RESAMPLES,
                                                                                   len(mine_by_seed)))
    curves, targets = random_by_seed[draws].mean(axis=1), mine_by_seed[draws].mean(axis=1)  # (B, K), (B,)
    budget = equivalent_budgets(ns, curves, targets)
    budget = np.where(np.isnan(budget) & (targets < curves.min(axis=1)), ns[-1], budget)
    budget = np.where(np.isnan(budget) & (targets > curves[:, 0]), ns[0], budget)
    low, high = np.nanpercentile(budget / n_labels, [2.5, 97.5])
    return float(low), float(high)


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
    paired t-test p-value, the random budget with the same mean MAE (or its bound, random_equivalent)
    and the label efficiency with its bootstrap interval over seeds."""
    key = ["head", "n_labels", "seed"]
    mine = results[(results["head"] == row.head) & (results["strategy"] == row.strategy)
                   & (results["n_labels"] == row.n_labels)].set_index(key)["mae"]
    theirs = results[results["strategy"] == "random"].set_index(key)["mae"].reindex(mine.index)
    diff = (mine - theirs).dropna().to_numpy()
    ns = random_curve.index.to_numpy()
    n_equivalent, relation = random_equivalent(ns, random_curve.to_numpy(), row.mae_mean)
    random_runs = results[(results["head"] == row.head) & (results["strategy"] == "random")]
    random_by_seed = random_runs.pivot(index="seed", columns="n_labels", values="mae")[ns].dropna()
    paired = mine.droplevel(["head", "n_labels"]).reindex(random_by_seed.index).dropna()
    low, high = efficiency_interval(ns, random_by_seed.loc[paired.index].to_numpy(), paired.to_numpy(), row.n_labels)
    return {"mae_diff_vs_random": diff.mean() if len(diff) else np.nan,
            "mae_diff_se": diff.std(ddof=1) / np.sqrt(len(diff)) if len(diff) > 1 else np.nan,
            "p_value_paired_t": stats.ttest_1samp(diff, 0.0).pvalue if len(diff) > 1 else np.nan,
            "random_n_equivalent": n_equivalent, "label_efficiency_relation": relation,
            "label_efficiency": n_equivalent / row.n_labels, "label_efficiency_low": low,
            "label_efficiency_high": high}


def summarize(results):
    """Per (head, strategy, N): count, mean and std over seeds of every metric; for strategies other
    than random, the comparison with random of the same head (paired_with_random). Its two-sided
    paired t-test p-value is Holm-adjusted within one family per head: every (strategy, N) comparison
    with random of that head in the run (strategies other than random x budgets)."""
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
    """Strategies, heads, seeds and budgets that the pool can serve, and the rounds of adaptive if it runs;
    budgets sorted ascending."""
    check_names("strategies", cfg.SAMPLING_STRATEGIES, adaptive.STRATEGIES)
    check_names("heads", cfg.HEAD, HEADS)
    if not cfg.SAMPLING_SEEDS or len(set(cfg.SAMPLING_SEEDS)) != len(cfg.SAMPLING_SEEDS):
        raise InputError(f"seeds {cfg.SAMPLING_SEEDS}: expected one or more distinct integers")
    if not cfg.SAMPLING_NS:
        raise InputError("the list of label budgets N is empty")
    bad = [n for n in cfg.SAMPLING_NS if not 2 <= n <= pool_size]
    if bad:
        raise InputError(f"label budgets {bad}: each N must be in 2..{pool_size}, the size of the training pool")
    check_tuning(cfg)
    ns = sorted(set(cfg.SAMPLING_NS))
    if adaptive.NAME in cfg.SAMPLING_STRATEGIES:
        adaptive.check_rounds(cfg.ADAPTIVE_ROUNDS, ns)
    return ns


def check_tuning(cfg):
    """HEAD_TUNING is known; under "labels", every budget can be split into HEAD_CV_FOLDS folds for MLP heads."""
    if cfg.HEAD_TUNING not in TUNINGS:
        raise InputError(f"HEAD_TUNING={cfg.HEAD_TUNING!r}: expected one of {list(TUNINGS)}")
    if cfg.HEAD_TUNING != "labels" or "mlp" not in cfg.HEAD:
        return
    if cfg.HEAD_CV_FOLDS < 2:
        raise InputError(f"HEAD_CV_FOLDS={cfg.HEAD_CV_FOLDS}: expected 2 or more folds for the MLP's epoch count")
    small = [n for n in cfg.SAMPLING_NS if n < cfg.HEAD_CV_FOLDS]
    if small:
        raise InputError(f"label budgets {small}: each N must be at least HEAD_CV_FOLDS={cfg.HEAD_CV_FOLDS}, the folds "
                         "the MLP head's epoch count is cross-validated over (or set HEAD_TUNING=\"validation\")")
