"""The adaptive strategy: selection in labelling rounds that read the labels of the rounds before.

Round 1 is gp_variance (selection.py): nothing is labelled yet. Before each later round, the labels of
every row picked so far (the pool's labels, as if they had just been measured) refit the Gaussian
process: its kernel width (KRR_WIDTHS times the median distance of the labelled latents) and its noise
variance (a ridge of KRR_RIDGES) are the pair with the lowest closed-form leave-one-out MAE of kernel
ridge regression on the standardized labels (heads.krr_fit_loo), the prior variance staying 1, that of
the standardized labels. The round then picks its rows greedily by GP_SCORE under that kernel (the
pool variance a pick removes, or its own), conditioned on every labelled row
(selection.posterior_variance_greedy). The labels move the picks only through the kernel they choose:
a GP's posterior variance never reads them otherwise.

The picks at a budget N are the rows labelled after the rounds summing to N, so the strategy is nested
and compares with the others at the same total N. It reads labels, so it lives above heads.py rather
than in the label-free selection.py.
"""
import itertools

import torch

import selection
from heads import check_kernel_width, krr_fit_loo
from utils import InputError

NAME = "adaptive"
NESTED = {**selection.NESTED, NAME: True}  # every strategy of the experiment, and whether it is nested
STRATEGIES = list(NESTED)


def check_rounds(rounds, ns):
    """ADAPTIVE_ROUNDS serves the budgets ns (ascending): its cumulative sums hold every N and end at the largest."""
    sums = list(itertools.accumulate(rounds))
    if not set(ns) <= set(sums) or sums[-1] != ns[-1]:
        raise InputError(f"ADAPTIVE_ROUNDS={list(rounds)}: cumulative sums {sums} must include every budget of "
                         f"SAMPLING_NS {list(ns)} and end at its largest")


def check_labels(labels, where):
    """Labels (L,) that a kernel can be fitted to: at least 2, not all equal."""
    if len(labels) < 2:
        raise InputError(f"{where}: {len(labels)} labelled structures; {NAME} needs at least 2 to fit its kernel "
                         "width and noise")
    if labels.min() == labels.max():
        raise InputError(f"{where}: the {len(labels)} labels are all {float(labels[0]):g}; {NAME} cannot fit a "
                         "kernel to labels that never vary")


def labelled_round(z, labelled, labels, n_samples, cfg, where):
    """One round after the labelled rows (L,) of z (n, d), whose labels are `labels` (L,): the kernel that
    krr_fit_loo chooses for them (KRR_WIDTHS, KRR_RIDGES), then n_samples rows by GP_SCORE,
    conditioned on the labelled ones. Returns the picks (n_samples,), their posterior variance when picked,
    and the fit ({width, ridge, loo_mae, ...})."""
    selection.check_budget(NAME, len(z), n_samples, len(labelled))
    check_labels(labels, where)
    check_kernel_width(z[labelled], where, f"use other latents or another strategy than {NAME}")
    labels = labels.double()
    fit = krr_fit_loo(z[labelled], (labels - labels.mean()) / labels.std(), cfg.KRR_WIDTHS, cfg.KRR_RIDGES)
    picks, variance = selection.posterior_variance_greedy(z, n_samples, fit["gamma"], fit["ridge"], labelled,
                                                          score=cfg.GP_SCORE)
    return picks, variance, fit


def adaptive_selection(z, y, seed, cfg):
    """Rows of z (n, d) picked in rounds of the sizes ADAPTIVE_ROUNDS: round 1 by gp_variance at `seed`, each
    later one by labelled_round on the pool labels y (n,) of every row picked before. Returns the picks
    (sum of the rounds,), their posterior variance when picked, and the fit of each round after the first."""
    rounds = cfg.ADAPTIVE_ROUNDS
    picks, variance = selection.gp_variance(z, rounds[0], seed, cfg.GP_WIDTH, cfg.GP_NOISE, score=cfg.GP_SCORE)
    fits = []
    for number, size in enumerate(rounds[1:], start=2):
        more, more_variance, fit = labelled_round(z, picks, y[picks], size, cfg, f"{NAME} seed {seed}, round {number}")
        picks, variance = torch.cat([picks, more]), torch.cat([variance, more_variance])
        fits.append(fit)
    return picks, variance, fits
