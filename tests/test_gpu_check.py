"""benchmarks/gpu_check.sh: its CPU dry run (tiny sizes) runs every step and writes the report, and
without CUDA a real run stops at once with one line."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.sh"
pytest.importorskip("sevenn", reason="optional: pip install -r requirements-pretrained.txt")
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def gpu_check(qm9_root, *args):
    env = {**os.environ, "PYTHON": sys.executable, "DATA_ROOT": str(qm9_root)}
    return subprocess.run(["bash", str(SCRIPT), *map(str, args)], capture_output=True, text=True, env=env,
                          timeout=900)


def test_the_dry_run_runs_every_step_and_writes_one_report(qm9_root, tmp_path):
    result = gpu_check(qm9_root, tmp_path / "out", "--dry-run")
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    assert [(step["name"], step["status"]) for step in report["steps"]] == [
        ("encoders", 0), ("latents", 0), ("grid", 0), ("export", 0), ("bench", 0)]
    assert [row["size"] for row in report["encoders"]["rows"]] == ["default", "large"]
    assert any("latents" in line for line in report["training"])
    assert any(line.startswith("stage selection") for line in report["grid"])
    assert len(report["export"]) == 1 and "structures/s" in report["export"][0]
    assert (tmp_path / "out" / "gpu_check.log").is_file()


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA machine runs the real check")
def test_without_cuda_a_real_run_is_one_line_and_writes_nothing(qm9_root, tmp_path):
    result = gpu_check(qm9_root, tmp_path / "out")
    assert result.returncode == 2
    assert result.stderr.splitlines() == ["error: benchmarks/gpu_check.sh: no CUDA device here; expected a CUDA "
                                          "machine, or --dry-run for the CPU"]
    assert not (tmp_path / "out").exists()
