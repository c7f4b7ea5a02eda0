"""The result tables of the README and docs/results.md say what the committed CSVs under results/ say."""
import json
import re
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
# table row label -> (summary.csv, head, strategy) of the run it reports, and its selection cell
HEADLINE_ROWS = {
    "package encoder, 25 epochs (MLP)": ("results/qm9_cpu_readout/sampling/summary.csv", "mlp", "random", "random"),
    "package encoder, 12 epochs (KRR)": ("results/qm9_cpu_12ep_strategies/summary.csv", "krr", "herding",
                                         "herding, its best"),
    "package encoder, 25 epochs (MLP), 10 seeds, tuned on its N labels": (
        "results/qm9_encoder25_labels/labels/summary.csv", "mlp", "random", "random"),
    "package encoder, 25 epochs (KRR), 20 seeds, tuned on its N labels": (
        "results/qm9_encoder25_labels/labels/summary.csv", "krr", "random", "random"),
    "SevenNet-0 frozen (MLP)": ("results/qm9_sevennet0/summary.csv", "mlp", "random", "random"),
    "SevenNet-0 frozen (KRR)": ("results/qm9_sevennet0/summary.csv", "krr", "herding", "herding"),
    "SevenNet-0 frozen (MLP), tuned on its N labels": ("results/qm9_sevennet0_labels/summary.csv", "mlp", "random",
                                                       "random"),
    "SevenNet-0 frozen (KRR), tuned on its N labels": ("results/qm9_sevennet0_labels/summary.csv", "krr", "random",
                                                       "random"),
    "SevenNet-0 frozen (KRR), 20 seeds, selection on 64 components | random": (
        "results/qm9_sevennet0_seeds20_pca64/summary.csv", "krr", "random", "random"),
    "SevenNet-0 frozen (KRR), 20 seeds, selection on 64 components | TypiClust": (
        "results/qm9_sevennet0_seeds20_pca64/summary.csv", "krr", "typiclust", "TypiClust"),
    "SevenNet-0 frozen (KRR), 10 seeds, selection on 64 components": (
        "results/qm9_sevennet0_gp_integrated/summary.csv", "krr", "gp_variance", "GP, removed variance"),
    "FCHL19 KRR (classical)": ("results/qm9_fchl19_krr/summary.csv", "fchl19_krr", "random", "random"),
}
COREMOF_STRATEGIES = {"random": "random", "k-center": "kcenter", "k-means": "kmeans", "TypiClust": "typiclust",
                      "kernel herding": "herding"}
BUDGETS = [10, 20, 50, 100, 200, 500, 1000]  # the default SAMPLING_NS


def table_rows(path):
    """{first cell: [other cells]} of every markdown table row in `path`, and {first | second cell: ...}."""
    rows = {}
    for line in (ROOT / path).read_text().splitlines():
        if line.startswith("|") and not line.startswith("|---"):
            cells = [cell.strip() for cell in line.strip("|").split("|")]
            rows[" | ".join(cells[:2]) if cells[0] in ("MLP", "KRR") else cells[0]] = cells
            rows.setdefault(" | ".join(cells[:2]), cells)  # rows that share a first cell, told apart by the second
    return rows


def curve(path, head, strategy):
    summary = pd.read_csv(ROOT / path)
    return summary[(summary["head"] == head) & (summary["strategy"] == strategy)].set_index("n_labels")


def mae_row(label, path, head, strategy, budgets, tails=("max",)):
    """The markdown line docs/results.md shows for one curve: label, MAE mean ± std (meV) at each budget,
    then the mean of each tail error (eV) at N = 1000."""
    rows = curve(path, head, strategy)
    cells = [f"{1000 * rows.loc[n, 'mae_mean']:.0f} ± {1000 * rows.loc[n, 'mae_std']:.0f}" for n in budgets]
    cells += [f"{rows.loc[1000, f'{tail}_abs_error_mean']:.2f}" for tail in tails]
    return f"| {' | '.join([label, *cells])} |"


def results_lines():
    return (ROOT / "docs/results.md").read_text().splitlines()


@pytest.mark.parametrize("label", HEADLINE_ROWS)
def test_the_readme_headline_table_matches_its_summaries(label):
    path, head, strategy, selection_cell = HEADLINE_ROWS[label]
    cells = table_rows("README.md")[label]
    assert cells[1] == selection_cell
    rows = curve(path, head, strategy)
    expected = [f"{1000 * rows.loc[n, 'mae_mean']:.0f} ± {1000 * rows.loc[n, 'mae_std']:.0f}"
                for n in (10, 50, 100, 200, 500, 1000)]
    assert cells[2:] == expected


@pytest.mark.parametrize("head", ["MLP", "KRR"])
@pytest.mark.parametrize("label", COREMOF_STRATEGIES)
def test_the_coremof_table_matches_its_summary(head, label):
    rows = curve("results/coremof_av_vf/summary.csv", head.lower(), COREMOF_STRATEGIES[label])
    cells = table_rows("docs/results.md")[f"{head} | {label}"]
    assert cells[2:] == [f"{1000 * rows.loc[n, 'mae_mean']:.1f}" for n in BUDGETS]


@pytest.mark.parametrize("head", ["MLP", "KRR"])
def test_the_coremof_descriptor_control_matches_its_summary(head):
    rows = curve("results/coremof_av_vf/descriptors/summary.csv", head.lower(), "random")
    cells = table_rows("docs/results.md")[f"{head} | descriptor control, random"]
    assert cells[2:] == [f"{1000 * rows.loc[n, 'mae_mean']:.1f}" for n in BUDGETS]


STUDENT_ROWS = {"package encoder, 12 epochs": "default", "student of SevenNet-0, 12 epochs": "distilled",
                "SevenNet-0 frozen": "sevennet0"}  # label -> run folder under results/qm9_student_10k


@pytest.mark.parametrize("label", STUDENT_ROWS)
def test_the_student_table_matches_its_summaries(label):
    rows = curve(f"results/qm9_student_10k/{STUDENT_ROWS[label]}/summary.csv", "krr", "random")
    expected = [f"{1000 * rows.loc[n, f'{metric}_mean']:.0f} ± {1000 * rows.loc[n, f'{metric}_std']:.0f}"
                for metric in ("val_mae", "mae") for n in (100, 1000)]
    assert table_rows("docs/results.md")[label][1:] == expected


GP_SCORE_ROWS = {"random": ("integrated", "random"), "GP variance, own": ("variance", "gp_variance"),
                 "GP variance, removed": ("integrated", "gp_variance"), "adaptive, own": ("variance", "adaptive"),
                 "adaptive, removed": ("integrated", "adaptive")}  # label: (run folder under
# results/qm9_10k_sevennet0_gp_score, strategy)


@pytest.mark.parametrize("label", GP_SCORE_ROWS)
def test_the_gp_score_table_matches_its_summaries(label):
    run, strategy = GP_SCORE_ROWS[label]
    path = f"results/qm9_10k_sevennet0_gp_score/{run}/summary.csv"
    assert mae_row(label, path, "krr", strategy, BUDGETS + [1500]) in results_lines()


@pytest.mark.parametrize("label, strategy", [("random", "random"), ("GP variance, removed", "gp_variance")])
def test_the_full_qm9_gp_score_table_matches_its_summary(label, strategy):
    path = "results/qm9_sevennet0_gp_integrated/summary.csv"
    assert mae_row(label, path, "krr", strategy, BUDGETS, ("p95", "max")) in results_lines()


@pytest.mark.parametrize("label, strategy", [("random", "random"), ("k-center", "kcenter"), ("k-means", "kmeans"),
                                             ("TypiClust", "typiclust"), ("kernel herding", "herding")])
def test_the_package_encoder_strategy_table_matches_its_summary(label, strategy):
    path = "results/qm9_encoder25_labels/strategies_krr/summary.csv"
    assert mae_row(label, path, "krr", strategy, BUDGETS) in results_lines()


PROTOCOL_ROWS = {"package encoder, {head}, validation": "results/qm9_encoder25_labels/validation/summary.csv",
                 "package encoder, {head}, own labels": "results/qm9_encoder25_labels/labels/summary.csv",
                 "SevenNet-0, {head}, own labels": "results/qm9_sevennet0_seeds20_pca64/summary.csv"}


@pytest.mark.parametrize("head", ["MLP", "KRR"])
@pytest.mark.parametrize("label", PROTOCOL_ROWS)
def test_the_package_encoder_protocol_table_matches_its_summaries(label, head):
    assert mae_row(label.format(head=head), PROTOCOL_ROWS[label], head.lower(), "random", BUDGETS) in results_lines()


@pytest.mark.parametrize("encoder_run, sevennet_run, claim", [
    ("results/qm9_encoder25_labels/labels", "results/qm9_sevennet0_seeds20_pca64", "{low}–{high} meV ({share})"),
    ("results/qm9_cpu_readout/sampling", "results/qm9_sevennet0", "{low}–{high} meV, {share}, under the validation"),
])
def test_the_prose_ranges_match_the_summaries(encoder_run, sevennet_run, claim):
    """SevenNet-0's margin over the encoder at N = 100-1000, random picks, either head, as the README says."""
    margins = []
    for head in ("mlp", "krr"):
        encoder = curve(f"{encoder_run}/summary.csv", head, "random")["mae_mean"]
        sevennet = curve(f"{sevennet_run}/summary.csv", head, "random")["mae_mean"]
        margins += [(encoder[n] - sevennet[n], (encoder[n] - sevennet[n]) / encoder[n]) for n in (100, 200, 500, 1000)]
    low, high = min(m for m, _ in margins), max(m for m, _ in margins)
    share = min(s for _, s in margins), max(s for _, s in margins)
    text = claim.format(low=f"{1000 * low:.0f}", high=f"{1000 * high:.0f}",
                        share=f"{100 * share[0]:.0f}–{100 * share[1]:.0f}%")
    assert text in re.sub(r"\s+", " ", (ROOT / "README.md").read_text())


def test_every_run_not_from_a_clean_commit_is_marked():
    """A run_info*.json with a dirty tree or no commit is listed in docs/results.md's provenance table, and
    every listed one says what its file says."""
    marked = {cells[0].strip("`"): cells[1].strip("`") for cells in table_rows("docs/results.md").values()
              if cells[0].startswith("`results/")}
    unclean = {}
    for path in ROOT.glob("results/**/run_info*.json"):
        info = json.loads(path.read_text())
        if info["git_dirty"] is not False:
            unclean[str(path.relative_to(ROOT))] = info["git_commit"][:7] if info["git_dirty"] else "none recorded"
    assert unclean.items() <= marked.items()


COREMOF_LABELS = "results/coremof_av_vf_labels"
COREMOF_LABELS_STRATEGIES = {**COREMOF_STRATEGIES, "GP variance": "gp_variance"}


def void_fraction_row(cells, path, head, strategy):
    """The markdown line of one CoRE MOF curve: `cells`, then test MAE mean ± std (× 10⁻³) at each budget,
    then the mean largest error (× 10⁻³) at N = 1000."""
    rows = curve(path, head, strategy)
    values = [f"{1000 * rows.loc[n, 'mae_mean']:.1f} ± {1000 * rows.loc[n, 'mae_std']:.1f}" for n in BUDGETS]
    largest = f"{1000 * rows.loc[1000, 'max_abs_error_mean']:.0f}"
    return f"| {' | '.join([*cells, *values, largest])} |"


@pytest.mark.parametrize("latent", ["encoder", "descriptors"])
@pytest.mark.parametrize("head", ["MLP", "KRR"])
@pytest.mark.parametrize("label", COREMOF_LABELS_STRATEGIES)
def test_the_coremof_labels_table_matches_its_summaries(label, head, latent):
    path = f"{COREMOF_LABELS}/{latent}/summary.csv"
    assert void_fraction_row([head, latent, label], path, head.lower(), COREMOF_LABELS_STRATEGIES[label]) \
        in results_lines()
