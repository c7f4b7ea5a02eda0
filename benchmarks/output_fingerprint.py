"""Fingerprint the outputs of small runs of all three scripts, to show that a change of layout changed no bit.

Runs, into a scratch folder: QM9 400 molecules for 2 epochs (weights and latents), the descriptor control,
the sampling grid with every strategy and both heads on those latents, CoRE MOF 40 structures for 1 epoch,
and a 200-molecule SevenNet-0 export (skipped when sevenn is not installed). It hashes every tensor of the
checkpoints, every array of the npz files and every CSV (less its timing columns), and writes them as JSON:

    python benchmarks/output_fingerprint.py --out before.json      # on the old layout
    python benchmarks/output_fingerprint.py --compare before.json  # on the new one: exit 1 on any difference
"""
import argparse
import hashlib
import importlib.util
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import torch

ROOT = Path(__file__).resolve().parent.parent
TIMING_COLUMNS = ("fit_seconds", "seconds", "select_seconds")
PATH_SETTINGS = ("DATA_ROOT", "OUTPUT_DIR")  # where the checkout lies, not what it computes


def run(*args):
    subprocess.run([sys.executable, *map(str, args)], cwd=ROOT, check=True, stdout=subprocess.DEVNULL)


def digest(payload):
    return hashlib.sha256(payload).hexdigest()[:16]


def config_digest(text):
    """The digest of a saved config's JSON, less the settings that name the checkout's folders."""
    config = json.loads(text)
    return digest(json.dumps({k: v for k, v in config.items() if k not in PATH_SETTINGS}, sort_keys=True).encode())


def tensor_digests(value, prefix):
    """Every tensor and primitive inside a checkpoint, by its key path."""
    if prefix == "/config":
        return {prefix: config_digest(value)}
    if isinstance(value, torch.Tensor):
        return {prefix: digest(value.detach().cpu().contiguous().numpy().tobytes())}
    if isinstance(value, dict):
        return {k: v for key, item in value.items() for k, v in tensor_digests(item, f"{prefix}/{key}").items()}
    if isinstance(value, (list, tuple)):
        return {k: v for i, item in enumerate(value) for k, v in tensor_digests(item, f"{prefix}/{i}").items()}
    return {prefix: digest(repr(value).encode())}


def npz_digests(path):
    with np.load(path, allow_pickle=False) as arrays:
        return {key: config_digest(str(arrays[key])) if key == "config" else digest(arrays[key].tobytes())
                for key in arrays.files}


def csv_digest(path):
    frame = pd.read_csv(path)
    return digest(frame.drop(columns=[c for c in TIMING_COLUMNS if c in frame]).to_csv(index=False).encode())


def fingerprint(folder):
    """{relative path: digests} of every checkpoint, npz and CSV under the folder."""
    prints = {}
    for path in sorted(folder.rglob("*")):
        name = str(path.relative_to(folder))
        if path.suffix == ".pt":
            prints[name] = tensor_digests(torch.load(path, weights_only=True), "")
        elif path.suffix == ".npz" and "chunks" not in path.parts:
            prints[name] = npz_digests(path)
        elif path.suffix == ".csv":
            prints[name] = csv_digest(path)
    return prints


def small_runs(scratch):
    common = ["--set", "EVAL_BATCH_SIZE=64", "--data-root", ROOT / "data"]
    run("train_encoder_qm9.py", "--max-molecules", 400, "--epochs", 2, "--out-dir", scratch / "qm9", *common)
    run("train_encoder_qm9.py", "--max-molecules", 400, "--descriptor-latents", "--out-dir", scratch / "desc",
        *common)
    run("sampling_mlp_experiment.py", "--latents", scratch / "qm9/latents_qm9.npz", "--out-dir",
        scratch / "qm9/sampling", "--ns", 10, 20, 50, "--seeds", 0, 1, "--mlp-epochs", 30)
    run("sampling_mlp_experiment.py", "--latents", scratch / "qm9/latents_qm9.npz", "--out-dir",
        scratch / "qm9/select", "--select", "typiclust", "--budget", 15)
    run("train_encoder_qm9.py", "--dataset", "coremof", "--target", "AV_VF", "--max-structures", 40, "--epochs", 1,
        "--set", "BATCH_MAX_ATOMS=2048", "--out-dir", scratch / "mof", *common)
    if importlib.util.find_spec("sevenn") is not None:
        run("export_pretrained_latents.py", "--model", "sevennet-0", "--max-molecules", 200, "--out-dir",
            scratch / "7net", "--data-root", ROOT / "data")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--out", type=Path, help="write the fingerprint here")
    action.add_argument("--compare", type=Path, help="compare with this fingerprint; exit 1 on any difference")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        small_runs(Path(scratch))
        prints = fingerprint(Path(scratch))
    if args.out:
        args.out.write_text(json.dumps(prints, indent=1, sort_keys=True) + "\n")
        print(f"{len(prints)} files fingerprinted into {args.out}")
        return
    expected = json.loads(args.compare.read_text())
    differ = sorted(name for name in expected.keys() | prints.keys() if expected.get(name) != prints.get(name))
    print(f"{len(prints)} files fingerprinted; {len(differ)} differ from {args.compare}" +
          "".join(f"\n  {name}" for name in differ))
    sys.exit(1 if differ else 0)


if __name__ == "__main__":
    main()
