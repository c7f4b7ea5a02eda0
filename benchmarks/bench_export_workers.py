"""How many worker processes should the pretrained export use? The same export of a seeded QM9 subset
with each PRETRAINED_WORKERS value, interleaved in one run, and the embedding speed its log reports.

    python benchmarks/bench_export_workers.py --data-root /work/main/data --molecules 2000 --workers 1 2 \\
        --repeats 2 --out benchmarks/results/export_workers_cpu.json

Each export runs in a fresh temporary folder (chunks of 500 molecules); the npz of every run must be
bit-identical to the first, or the bench fails.
"""
import argparse
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the package modules live in the repo root

from cli import run_cli  # noqa: E402
from utils import write_text  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", required=True, help="where the QM9 cache lives")
    parser.add_argument("--molecules", type=int, default=2000, help="seeded QM9 subset embedded by every run")
    parser.add_argument("--workers", nargs="+", type=int, default=[1, 2], help="PRETRAINED_WORKERS values")
    parser.add_argument("--repeats", type=int, default=1, help="rounds over the worker counts")
    parser.add_argument("--out", type=Path, help="also write the numbers here as JSON")
    return parser.parse_args(argv)


def export_speed(data_root, molecules, workers, out_dir):
    """Structures/s of one export's embedding, from its log, and its latents."""
    subprocess.run([sys.executable, str(ROOT / "export_pretrained_latents.py"), "--data-root", data_root,
                    "--max-molecules", str(molecules), "--out-dir", str(out_dir), "--set", "PRETRAINED_CHUNK_SIZE=500",
                    "--set", f"PRETRAINED_WORKERS={workers}"], check=True, capture_output=True)
    speed = re.search(r"\(([\d.]+) structures/s", (out_dir / "export.log").read_text()).group(1)
    return float(speed), np.load(out_dir / "latents_qm9.npz")["z_all"]


def main(argv=None):
    args = parse_args(argv)
    runs, reference = [], None
    with tempfile.TemporaryDirectory() as scratch:
        for repeat in range(args.repeats):
            for workers in args.workers:
                speed, z = export_speed(args.data_root, args.molecules, workers, Path(scratch) / f"{repeat}_{workers}")
                reference = z if reference is None else reference
                if not np.array_equal(z, reference):
                    raise SystemExit(f"{workers} workers wrote other latents than the first run")
                runs.append({"workers": workers, "repeat": repeat, "mol_per_s": speed})
                print(f"{workers} workers: {speed:.1f} mol/s", flush=True)
    if args.out:
        write_text(args.out, json.dumps({"molecules": args.molecules, "runs": runs}, indent=1))


if __name__ == "__main__":
    run_cli(main)
