"""Shared fixtures: the QM9 cache (built once per session from the installed qm9pack CSVs),
small molecules with known geometry, and a run of the encoder script on a few molecules."""
import os
import re
import subprocess
import sys
from pathlib import Path

# Idle OpenMP threads sleep instead of spinning; read when torch loads, so set before it is imported.
# Tests that keep every core busy (busy_cores) otherwise run several times slower.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np
import pytest
import torch
from e3nn import o3

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import cli  # noqa: E402
import qm9  # noqa: E402
import train_encoder_qm9  # noqa: E402

# Methane: C at the origin, four H on alternate cube corners, C-H = 1.09 Angstrom.
CH_BOND = 1.09
METHANE_Z = [6, 1, 1, 1, 1]
METHANE_POS = np.vstack([[0, 0, 0],
                         CH_BOND / np.sqrt(3) * np.array([[1, 1, 1], [1, -1, -1], [-1, 1, -1], [-1, -1, 1]])])
HH_DISTANCE = CH_BOND * np.sqrt(8 / 3)


@pytest.fixture(scope="session")
def qm9_root(tmp_path_factory):
    """A DATA_ROOT holding the QM9 cache, parsed once from the qm9pack CSVs."""
    root = tmp_path_factory.mktemp("qm9")
    qm9.load_qm9(root)
    return root


@pytest.fixture(scope="session")
def qm9_arrays(qm9_root):
    return qm9.load_qm9(qm9_root)


def random_molecules(sizes, generator, atomic_numbers=(1, 6, 7, 8, 9)):
    """Random molecules of the given sizes, atoms at least ~0.9 Angstrom apart: (z, pos, batch), float64."""
    z, pos, batch = [], [], []
    for molecule, size in enumerate(sizes):
        points = []
        while len(points) < size:
            candidate = torch.rand(3, generator=generator, dtype=torch.float64) * 4.0
            if all((candidate - p).norm() > 0.9 for p in points):
                points.append(candidate)
        pos.append(torch.stack(points))
        choice = torch.randint(len(atomic_numbers), (size,), generator=generator)
        z.append(torch.tensor(atomic_numbers)[choice])
        batch.append(torch.full((size,), molecule))
    return torch.cat(z), torch.cat(pos), torch.cat(batch)


def run_train(argv):
    """train_encoder_qm9's command line in this process."""
    train_encoder_qm9.main([str(a) for a in argv])


@pytest.fixture(scope="session")
def small_run(qm9_root, tmp_path_factory):
    """A finished encoder run on 300 QM9 molecules, 3 epochs."""
    out = tmp_path_factory.mktemp("small_run")
    run_train(["--data-root", qm9_root, "--max-molecules", 300, "--epochs", 3, "--batch-size", 32,
               "--out-dir", out])
    return out


def expect_input_error(capsys, fn, *args):
    """Run fn through cli.run_cli; check exit status 2 and a one-line message; return the message."""
    with pytest.raises(SystemExit) as exit_info:
        cli.run_cli(lambda: fn(*args))
    assert exit_info.value.code == 2
    message = capsys.readouterr().err.strip().splitlines()[-1]
    assert message.startswith("error: ")
    return message


@pytest.fixture
def busy_cores():
    """Every core kept busy by another process for the test's duration: thread scheduling then
    varies from run to run, which is what exposes reductions whose order depends on it."""
    spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(os.cpu_count() or 2)]
    yield
    for spinner in spinners:
        spinner.kill()
        spinner.wait()


def assert_same_tensors(expected, got, where):
    """Two state dicts hold bitwise equal tensors under the same names."""
    assert expected.keys() == got.keys(), where
    for name, tensor in expected.items():
        assert torch.equal(tensor, got[name]), f"{where}: {name} differs"


EPOCH_LINE = re.compile(r"epoch +(\d+)/(\d+) train ([\d.]+) val ([\d.]+) \[(?:\w+ [\d.]+ ?)+\] "
                        r"lr [\d.e+-]+ [\d.]+ s \d+ structures/s")


def epoch_lines(run_dir):
    return [EPOCH_LINE.search(line) for line in (run_dir / "train.log").read_text().splitlines()
            if EPOCH_LINE.search(line)]


def write_synthetic_latents(path, n=600, dim=16, seed=0, **replace):
    """A small latents npz whose y (eV) is a smooth function of the latents plus noise."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, dim)).astype(np.float32)
    y = -6.5 + 0.5 * np.tanh(z[:, 0] + 0.5 * z[:, 1] * z[:, 2]) + 0.02 * rng.normal(size=n)
    order = rng.permutation(n)
    arrays = {"z_all": z, "y_all": y, "idx_train": order[: int(0.7 * n)], "idx_val": order[int(0.7 * n): int(0.85 * n)],
              "idx_test": order[int(0.85 * n):], "structure_index": np.arange(1, n + 1), "config": np.array("{}")}
    arrays.update(replace)
    np.savez(path, **{k: v for k, v in arrays.items() if v is not None})
    return path


def random_motions(seed, count=3):
    """(rotation, shift) pairs in float64; the last rotation is improper (a reflection)."""
    generator = torch.Generator().manual_seed(seed)
    for trial in range(count):
        rotation = o3.rand_matrix(dtype=torch.float64)
        yield (-rotation if trial == count - 1 else rotation), torch.randn(3, generator=generator,
                                                                              dtype=torch.float64) * 5


def relative_error(a, b):
    return float(((a - b).norm() / b.norm()).detach())
