"""Label efficiency in summary.csv: its bounds beyond the random curve and its bootstrap interval over seeds."""
import numpy as np
import pytest

import evaluation

NS = np.array([10, 100, 1000])
RANDOM = np.array([0.4, 0.2, 0.1])


def scalar_budget(ns, curve, target):
    """label_efficiency as a plain loop over the segments: the reference for the vectorised version."""
    log_n, log_mae, t = np.log(ns), np.log(curve), np.log(target)
    for i in range(len(ns) - 1):
        if log_mae[i] >= t >= log_mae[i + 1] and log_mae[i] > log_mae[i + 1]:
            return np.exp(log_n[i] + (log_mae[i] - t) / (log_mae[i] - log_mae[i + 1]) * (log_n[i + 1] - log_n[i]))
    return np.nan


def test_vectorised_budgets_equal_a_loop_over_segments():
    rng = np.random.default_rng(0)
    curves = np.exp(rng.normal(size=(300, 4)).cumsum(axis=1) * 0.2)  # rising and falling curves
    targets = np.exp(rng.normal(size=300) * 0.3)
    ns = np.array([10, 20, 50, 100])
    got = evaluation.equivalent_budgets(ns, curves, targets)
    expected = np.array([scalar_budget(ns, c, t) for c, t in zip(curves, targets)])
    np.testing.assert_allclose(got, expected, rtol=1e-12)
    assert np.isnan(got).any() and not np.isnan(got).all()


def test_gains_beyond_random_are_bounds_not_gaps():
    assert evaluation.random_equivalent(NS, RANDOM, 0.2) == (pytest.approx(100), "=")
    assert evaluation.random_equivalent(NS, RANDOM, 0.05) == (1000, ">")  # better than random's best: > 1000
    assert evaluation.random_equivalent(NS, RANDOM, 0.5) == (10, "<")  # worse than random's first: < 10
    assert np.isnan(evaluation.label_efficiency(NS, RANDOM, 0.05))


def naive_interval(ns, random_by_seed, mine_by_seed, n_labels, resamples):
    """The bootstrap written out: the same draws, one resample at a time, bounds by random_equivalent."""
    rng = np.random.default_rng(evaluation.BOOTSTRAP_SEED)
    draws = rng.integers(len(mine_by_seed), size=(resamples, len(mine_by_seed)))
    values = [evaluation.random_equivalent(ns, random_by_seed[d].mean(axis=0), mine_by_seed[d].mean())[0] / n_labels
              for d in draws]
    return np.percentile(values, [2.5, 97.5])


def test_bootstrap_interval_equals_resampling_by_hand(monkeypatch):
    monkeypatch.setattr(evaluation, "BOOTSTRAP_RESAMPLES", 300)
    rng = np.random.default_rng(3)
    random_by_seed = RANDOM * np.exp(0.15 * rng.normal(size=(6, 3)))
    mine = 0.17 * np.exp(0.2 * rng.normal(size=6))
    low, high = evaluation.efficiency_interval(NS, random_by_seed, mine, 100)
    np.testing.assert_allclose([low, high], naive_interval(NS, random_by_seed, mine, 100, 300), rtol=1e-12)
    point = evaluation.label_efficiency(NS, random_by_seed.mean(axis=0), mine.mean()) / 100
    assert low < point < high
    assert evaluation.efficiency_interval(NS, random_by_seed, mine, 100) == (low, high)  # seeded


def test_bootstrap_interval_of_identical_seeds_is_the_point_and_beyond_random_is_a_bound():
    same = np.tile(RANDOM, (4, 1))
    low, high = evaluation.efficiency_interval(NS, same, np.full(4, 0.2), 50)
    assert low == pytest.approx(2.0) and high == pytest.approx(2.0)
    low, high = evaluation.efficiency_interval(NS, same, np.full(4, 0.05), 1000)  # better than random's best
    assert (low, high) == (1.0, 1.0)  # at least 1.0 at N = 1000
    assert np.isnan(evaluation.efficiency_interval(NS, same[:1], np.full(1, 0.2), 50)).all()
