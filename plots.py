"""Every figure, drawn from results already computed: learning curves, parity plots and the labels
each strategy picked."""
import numpy as np

from utils import atomic_path


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _save_figure(fig, out_png):
    fig.tight_layout()
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    _pyplot().close(fig)


def save_learning_curves(xs, panels, out_png, ylabel="test MAE (eV)", hline=None, references=None):
    """Log-log learning curves, one panel per title of `panels` {title: {label: ys (runs, len(xs))}}:
    the mean over runs and a geometric +-1 std band (mean times/divided by exp(std of log y)), which
    stays positive. `references` {title: {(source, label): (xs, means)}} adds the curves of other
    runs, in the colour of the same label and one dashed style per source; `hline` = (value, label)
    a horizontal line in every panel."""
    plt = _pyplot()
    import matplotlib.ticker

    labels = list(dict.fromkeys(label for curves in panels.values() for label in curves))
    colours = dict(zip(labels, plt.rcParams["axes.prop_cycle"].by_key()["color"] * len(labels)))
    sources = list(dict.fromkeys(source for curves in (references or {}).values() for source, _ in curves))
    styles = dict(zip(sources, ["--", "-.", ":", (0, (5, 1, 1, 1))] * len(sources)))
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4.5), squeeze=False)
    for ax, (title, curves) in zip(axes[0], panels.items()):
        for label, ys in curves.items():
            ys = np.asarray(ys, dtype=np.float64)
            mean = ys.mean(axis=0)
            spread = np.exp(np.log(ys).std(axis=0))
            ax.plot(xs, mean, marker="o", color=colours[label], label=f"{label} (mean of {len(ys)})")
            ax.fill_between(xs, mean / spread, mean * spread, color=colours[label], alpha=0.15)
        for (source, label), (ref_xs, ref_means) in (references or {}).get(title, {}).items():
            ax.plot(ref_xs, ref_means, linestyle=styles[source], marker="x", color=colours.get(label, "black"),
                    label=f"{label}, {source}")
        if hline is not None:
            ax.axhline(hline[0], color="gray", linestyle=":", label=hline[1])
        ax.set_xscale("log")
        ax.set_yscale("log")
        plain = matplotlib.ticker.FormatStrFormatter("%g")  # 0.3 and 100 rather than 3x10^-1 and 10^2
        for axis in (ax.xaxis, ax.yaxis):
            axis.set_major_formatter(plain)
        ax.yaxis.set_minor_formatter(plain)
        ax.set_xlabel("labelled structures N")
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize="small")
    _save_figure(fig, out_png)


def save_parity(panels, out_png, name="value", unit="eV"):
    """Predicted against true values, one square panel per (row title, column title) of `panels`
    {row: {column: (y_true (T,), y_pred (T,))}}, with the diagonal and the MAE in each panel."""
    plt = _pyplot()
    columns = list(dict.fromkeys(column for row in panels.values() for column in row))
    fig, axes = plt.subplots(len(panels), len(columns), figsize=(3.2 * len(columns), 3.2 * len(panels)),
                             squeeze=False)
    every = np.concatenate([np.concatenate(pair) for row in panels.values() for pair in row.values()])
    limits = (np.percentile(every, 0.05), np.percentile(every, 99.95))
    for ax_row, (row_title, row) in zip(axes, panels.items()):
        for ax, column in zip(ax_row, columns):
            if column not in row:
                ax.set_visible(False)
                continue
            y_true, y_pred = row[column]
            ax.scatter(y_true, y_pred, s=2, alpha=0.25, linewidths=0)
            ax.plot(limits, limits, color="black", linewidth=0.8)
            ax.set_xlim(limits)
            ax.set_ylim(limits)
            ax.set_aspect("equal")
            ax.set_title(f"{row_title}: {column}\nMAE {np.mean(np.abs(y_true - y_pred)):.4g} {unit}", fontsize="small")
            ax.set_xlabel(f"true {name} ({unit})")
            ax.set_ylabel(f"predicted {name} ({unit})")
    _save_figure(fig, out_png)


def save_label_histograms(pool, panels, out_png, name="label", unit="eV"):
    """Density histograms of labels: one row per title of `panels` {title: {label: values}}, one
    panel per label, each drawn over the density of `pool` (all values), so a selection's bias shows."""
    plt = _pyplot()
    pool = np.asarray(pool, dtype=np.float64)
    bins = np.linspace(*np.percentile(pool, [0.1, 99.9]), 41)
    columns = list(dict.fromkeys(label for row in panels.values() for label in row))
    fig, axes = plt.subplots(len(panels), len(columns), figsize=(3.2 * len(columns), 2.8 * len(panels)),
                             squeeze=False, sharex=True)
    for ax_row, (title, histograms) in zip(axes, panels.items()):
        for ax, label in zip(ax_row, columns):
            values = np.asarray(histograms.get(label, []), dtype=np.float64)
            ax.hist(pool, bins=bins, density=True, color="lightgray", label="pool")
            ax.hist(np.clip(values, bins[0], bins[-1]), bins=bins, density=True, histtype="step", linewidth=1.5,
                    label="picks")
            ax.set_title(f"{title}: {label}\n{len(values):,} picks, mean {values.mean():.3g}, std {values.std():.3g}"
                         f"\n(pool {pool.mean():.3g}, {pool.std():.3g} {unit})", fontsize="small")
            ax.set_yticks([])
        ax_row[0].legend(fontsize="small")
    for ax in axes[-1]:
        ax.set_xlabel(f"{name} ({unit})")
    _save_figure(fig, out_png)

CURVE_LABELS = {"random": "random", "kcenter": "k-center", "kmeans": "k-means", "typiclust": "TypiClust",
                "herding": "kernel herding", "hybrid": "TypiClust, then k-center"}

HEAD_TITLES = {"mlp": "ResidualMLP head", "krr": "kernel ridge head"}


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
            own_head = ref_head in HEAD_TITLES
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
    """curve_mae.png, curve_p95.png, curve_max.png (the largest test error, where coverage should show),
    parity.png and selected_labels.png; target: (name, unit)."""
    heads = list(dict.fromkeys(results["head"]))
    name, unit = target
    save_learning_curves(ns, curve_panels(results, ns, "mae"), out_dir / "curve_mae.png",
                         ylabel=f"test MAE of {name} ({unit})", references=reference_panels(reference, heads, 1),
                         hline=(mean_predictor_mae, f"predict the train mean ({mean_predictor_mae:.4g} {unit})"))
    save_learning_curves(ns, curve_panels(results, ns, "p95_abs_error"), out_dir / "curve_p95.png",
                         ylabel=f"95th percentile of the test |error| of {name} ({unit})",
                         references=reference_panels(reference, heads, 2))
    save_learning_curves(ns, curve_panels(results, ns, "max_abs_error"), out_dir / "curve_max.png",
                         ylabel=f"largest test |error| of {name} ({unit})")
    save_parity({f"{HEAD_TITLES[head]}, N = {ns[-1]}": {CURVE_LABELS[strategy]: pair
                                                        for (h, strategy), pair in parity.items() if h == head}
                 for head in heads}, out_dir / "parity.png", name=name, unit=unit)
    save_label_histograms(y_pool, {f"N = {n}, all seeds": {CURVE_LABELS[strategy]: values
                                                           for (strategy, budget), values in picked_labels.items()
                                                           if budget == n}
                                   for n in label_budgets(ns)}, out_dir / "selected_labels.png", name=name, unit=unit)
