"""Training under torchrun: two gloo processes on the CPU against one, resume across process
counts, and a process that dies or stops answering."""
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch

import training
from conftest import ROOT, assert_same_tensors, epoch_lines, run_train

SCRIPT = str(ROOT / "train_encoder_qm9.py")
# 160 training molecules: ten whole batches of 16, so no batch is skipped for having fewer molecules than ranks
RUN = ["--max-molecules", 200, "--batch-size", 16]
# Two processes sum their gradients in another order than one process does: float32 rounding,
# compounded by Adam over 20 steps, stays far below this (measured: 2e-6 at most, after 20 steps).
ACROSS_PROCESS_COUNTS = 1e-4


def one_thread_env(**extra):
    return {**os.environ, "OMP_NUM_THREADS": "1", **extra}  # two processes share two cores


def torchrun(argv, processes=2):
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           f"--nproc_per_node={processes}", SCRIPT, *map(str, argv)],
                          cwd=ROOT, env=one_thread_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def weights(run_dir):
    return torch.load(run_dir / training.LAST, weights_only=True)


def assert_close_weights(expected, got, rtol):
    assert got["epoch"] == expected["epoch"]
    for part in ("encoder", "decoder"):
        for name, tensor in expected[part].items():
            torch.testing.assert_close(got[part][name], tensor, rtol=rtol, atol=rtol, msg=f"{part} {name}")


@pytest.fixture(scope="module")
def two_process_run(qm9_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("two") / "run"
    torchrun(["--data-root", qm9_root, *RUN, "--epochs", 2, "--out-dir", out])
    return out


def test_two_processes_train_the_model_of_one(qm9_root, tmp_path, two_process_run):
    run_train(["--data-root", qm9_root, *RUN, "--epochs", 2, "--out-dir", tmp_path / "one"])
    assert {p.name for p in two_process_run.iterdir()} == {p.name for p in (tmp_path / "one").iterdir()}
    assert [int(m.group(1)) for m in epoch_lines(two_process_run)] == [1, 2]  # rank 0 alone logs to the file
    assert_close_weights(weights(tmp_path / "one"), weights(two_process_run), ACROSS_PROCESS_COUNTS)


def test_resume_under_two_processes_and_on_another_count(qm9_root, tmp_path, two_process_run):
    torchrun(["--data-root", qm9_root, *RUN, "--epochs", 1, "--out-dir", tmp_path / "resumed"])
    shutil.copytree(tmp_path / "resumed", tmp_path / "one_more")
    torchrun(["--resume", "--epochs", 2, "--out-dir", tmp_path / "resumed"])
    straight, resumed = weights(two_process_run), weights(tmp_path / "resumed")
    for part in ("encoder", "decoder"):
        assert_same_tensors(straight[part], resumed[part], part)
    run_train(["--resume", "--epochs", 2, "--out-dir", tmp_path / "one_more"])  # two processes, then one
    assert_close_weights(straight, weights(tmp_path / "one_more"), ACROSS_PROCESS_COUNTS)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_ranks(argv, timeout_seconds):
    """Two ranks started by hand, as torchrun would, so that the test can kill or stop one."""
    env = one_thread_env(WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
    command = [sys.executable, SCRIPT, *map(str, argv), "--set", f"DIST_TIMEOUT_S={timeout_seconds}"]
    return [subprocess.Popen(command, cwd=ROOT, env={**env, "RANK": str(rank), "LOCAL_RANK": str(rank)},
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for rank in (0, 1)]


def wait_for_training(run_dir, ranks):
    while not (run_dir / training.LAST).exists():
        assert all(rank.poll() is None for rank in ranks), ranks[0].stderr.read()[-2000:]
        time.sleep(0.1)


@pytest.mark.parametrize("sig, message", [
    (signal.SIGKILL, r"Connection (reset|closed) by peer"),
    (signal.SIGSTOP, r"Timed out waiting 10000ms"),  # DIST_TIMEOUT_S, as set below
])
def test_a_rank_that_dies_or_hangs_fails_the_run(qm9_root, tmp_path, sig, message):
    """A killed rank closes its sockets, so the other fails at its next collective; a stopped one
    keeps them open, and only the process group's timeout ends the wait."""
    timeout_seconds = 10
    argv = ["--data-root", qm9_root, "--max-molecules", 80, "--epochs", 1000, "--out-dir", tmp_path / "run"]
    ranks = start_ranks(argv, timeout_seconds)
    try:
        wait_for_training(tmp_path / "run", ranks)
        os.kill(ranks[1].pid, sig)
        started = time.monotonic()
        _, stderr = ranks[0].communicate(timeout=timeout_seconds + 60)
        assert ranks[0].returncode != 0
        assert time.monotonic() - started < timeout_seconds + 60
        assert re.search(message, stderr), stderr[-2000:]
    finally:
        for rank in ranks:
            rank.kill()
            rank.wait()


def test_batches_too_small_for_every_process_stop_both_ranks_with_one_line(qm9_root, tmp_path):
    """BATCH_MAX_ATOMS=1 makes every batch one molecule, fewer than the two processes: no batch
    trains, so the run stops before it writes latents of an untrained encoder."""
    argv = ["--data-root", qm9_root, "--max-molecules", 40, "--epochs", 1, "--set", "BATCH_MAX_ATOMS=1",
            "--out-dir", tmp_path / "run"]
    ranks = start_ranks(argv, timeout_seconds=60)
    try:
        for rank in ranks:
            _, stderr = rank.communicate(timeout=300)
            assert rank.returncode == 2, stderr[-2000:]
            assert stderr.strip().splitlines()[-1] == ("error: 2 processes: no training batch holds a structure for "
                                                        "each process; expected BATCH_MAX_ATOMS=1 to fit 2 structures "
                                                        "at least")
    finally:
        for rank in ranks:
            rank.kill()
            rank.wait()
    assert not (tmp_path / "run").exists()
