"""Two sampling runs on the same latents, paired by (head, strategy, N, seed): what changed between them
(a setting such as SELECTION_DIM, a code change). For every (head, strategy, N) with seeds in both runs,
the mean MAE of each, their seed-paired difference (B - A) with its standard error and two-sided paired
t-test p-value, and the ratio of their mean largest errors. Rows whose picks cannot differ (random, by
default) are checked to be equal, which shows the heads themselves did not change. Prints a markdown table.

    python benchmarks/paired_runs.py results/qm9_sevennet0_labels results/qm9_sevennet0_seeds20_pca64
"""
import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

KEY = ["head", "strategy", "n_labels", "seed"]


def read_results(folder):
    path = Path(folder) / "results_all.csv"
    if not path.is_file():
        raise SystemExit(f"error: {path}: not found; expected the results_all.csv of a sampling run")
    return pd.read_csv(path)[KEY + ["mae", "max_abs_error"]]


def paired_table(a, b):
    """One row per (head, strategy, N) with seeds in both runs: MAE of each in meV, B - A ± SE, p, max-error ratio."""
    both = a.merge(b, on=KEY, suffixes=("_a", "_b"))
    rows = []
    for (head, strategy, n), group in both.groupby(["head", "strategy", "n_labels"]):
        diff = (group["mae_b"] - group["mae_a"]).to_numpy() * 1000
        rows.append({"head": head, "strategy": strategy, "N": n, "seeds": len(group),
                     "MAE A": 1000 * group["mae_a"].mean(), "MAE B": 1000 * group["mae_b"].mean(),
                     "B - A": diff.mean(), "SE": diff.std(ddof=1) / np.sqrt(len(diff)),
                     "p": stats.ttest_1samp(diff, 0.0).pvalue if diff.any() else 1.0,
                     "max B / max A": group["max_abs_error_b"].mean() / group["max_abs_error_a"].mean()})
    return pd.DataFrame(rows)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_a", help="sampling run folder A (the reference)")
    parser.add_argument("run_b", help="sampling run folder B")
    parser.add_argument("--same", nargs="*", default=["random"], help="strategies whose rows must be equal in both")
    parser.add_argument("--tolerance", type=float, default=0.0,
                        help="meV by which a --same row's mean MAE may differ (float32 heads in stacks of another "
                             "size round differently)")
    args = parser.parse_args(argv)
    a, b = read_results(args.run_a), read_results(args.run_b)
    table = paired_table(a, b)
    if table.empty:
        raise SystemExit("error: the two runs share no (head, strategy, N, seed)")
    for strategy in args.same:
        rows = table[table["strategy"] == strategy]
        if (rows["B - A"].abs() > args.tolerance).any():
            raise SystemExit(f"error: {strategy} differs between the runs, so the heads changed too:\n"
                             f"{rows.to_string(index=False)}")
    print(markdown(table[~table["strategy"].isin(args.same)]))


def markdown(table):
    cells = [[f"{v:.3g}" if isinstance(v, float) else str(v) for v in row] for row in table.itertuples(index=False)]
    lines = ["| " + " | ".join(table.columns) + " |", "|" + "---|" * len(table.columns)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in cells])


if __name__ == "__main__":
    sys.exit(main())
