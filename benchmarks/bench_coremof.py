"""What the CoRE MOF path costs: parsing the wheel into the cache, the sizes of the structures and
their graphs, and the encoder's training and latent throughput on crystals.

    python benchmarks/bench_coremof.py --out benchmarks/results/coremof_cpu.json
    python benchmarks/bench_coremof.py --structures 200 --budgets 2048 8192 --skip-parse

Parsing goes to a fresh folder (the cache under DATA_ROOT is not touched). Graph sizes cover every
structure of the cache at CUTOFF. Training throughput is one epoch over a seeded subset of the
structures within MAX_STRUCTURE_ATOMS, for each BATCH_MAX_ATOMS in --budgets, with the share of the
time spent building neighbour lists.
"""
import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import coremof  # noqa: E402
import graphs  # noqa: E402
import training  # noqa: E402
from cli import resolve_config, run_cli, run_metadata  # noqa: E402
from utils import get_device, set_seed, write_text  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--structures", type=int, default=400, help="structures of the timed training epoch")
    parser.add_argument("--budgets", type=int, nargs="+", default=[2048, 8192], help="BATCH_MAX_ATOMS values")
    parser.add_argument("--skip-parse", action="store_true", help="do not time a fresh parse of the wheel")
    parser.add_argument("--device", help="torch device (default: CUDA if present)")
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    return parser.parse_args(argv)


def quantiles(values):
    values = np.asarray(values)
    return {"median": float(np.median(values)), "p90": float(np.percentile(values, 90)), "max": int(values.max())}


def bench_parse():
    """Seconds to parse the wheel into a fresh cache, its size on disk, and the skips."""
    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        arrays = coremof.load_coremof(folder)
        seconds = time.perf_counter() - start
        size = (Path(folder) / coremof.CACHE_NAME).stat().st_size
    return {"seconds": seconds, "cache_mb": size / 1e6, "structures": len(arrays["n_atoms"]),
            "skipped": dict(zip(arrays["skipped_name"].tolist(), arrays["skipped_reason"].tolist()))}


def graph_sizes(arrays, cutoff, max_atoms):
    """Atoms and directed edges at `cutoff` per structure, for all structures and those within max_atoms."""
    first_atom = np.cumsum(arrays["n_atoms"]) - arrays["n_atoms"]
    edges = []
    start = time.perf_counter()
    for first, count, cell in zip(first_atom, arrays["n_atoms"], arrays["cell"]):
        pos = torch.as_tensor(arrays["pos"][first:first + count], dtype=torch.float64)
        edges.append(graphs.periodic_radius_graph(pos, torch.zeros(count, dtype=torch.long),
                                                  torch.as_tensor(cell)[None], cutoff)[0].shape[1])
    seconds = time.perf_counter() - start
    edges, atoms = np.array(edges), arrays["n_atoms"]
    kept = atoms <= max_atoms
    return {"cutoff": cutoff, "neighbour_list_seconds_all": seconds,
            "all": {"structures": len(atoms), "atoms": quantiles(atoms), "edges": quantiles(edges),
                    "neighbours_per_atom": float(edges.sum() / atoms.sum())},
            f"within {max_atoms} atoms": {"structures": int(kept.sum()), "atoms": quantiles(atoms[kept]),
                                          "edges": quantiles(edges[kept])}}


def timed_neighbour_lists(monkeypatched):
    """Wrap graphs.periodic_radius_graph to add up its seconds in monkeypatched["seconds"]."""
    build = graphs.periodic_radius_graph

    def counting(*args):
        start = time.perf_counter()
        result = build(*args)
        monkeypatched["seconds"] += time.perf_counter() - start
        return result
    return counting


def bench_training(structures_count, budget, device):
    """One training epoch over the training split of a seeded subset, and one latent pass over the
    whole subset, at BATCH_MAX_ATOMS=budget."""
    cfg = resolve_config({"DATASET": "coremof", "TARGET": "AV_VF", "MAX_STRUCTURES": structures_count,
                          "BATCH_MAX_ATOMS": budget})
    prepared = training.prepare_data(cfg, device)
    cfg = prepared.cfg
    set_seed(cfg.SEED)
    model, optimizer, _, _, _ = training.build_models(
        cfg, training.encoder_hparams(cfg, avg_num_neighbors=34.0, periodic=True),
        training.decoder_hparams(cfg, prepared.targets.shape[1]), device, checkpoint=None)
    rows = torch.as_tensor(prepared.split[0], device=device)
    clock = {"seconds": 0.0}
    graphs.periodic_radius_graph, original = timed_neighbour_lists(clock), graphs.periodic_radius_graph
    try:
        start = time.perf_counter()
        training.train_epoch(model, optimizer, prepared.structures, prepared.targets, rows, cfg)
        train_seconds, train_graph = time.perf_counter() - start, clock["seconds"]
        start = time.perf_counter()
        training.extract_latents(model.encoder, prepared.structures, cfg.EVAL_BATCH_SIZE, cfg.BATCH_MAX_ATOMS)
        latent_seconds = time.perf_counter() - start
    finally:
        graphs.periodic_radius_graph = original
    count = prepared.structures.num_molecules
    return {"batch_max_atoms": budget, "structures": count, "atoms": len(prepared.structures.z),
            "descriptor_structures_per_s": count / prepared.descriptor_seconds,
            "train_structures_per_s": len(rows) / train_seconds,
            "neighbour_list_share_of_training": train_graph / train_seconds,
            "latent_structures_per_s": count / latent_seconds}


def main(argv=None):
    args = parse_args(argv)
    device = get_device(args.device)
    cfg = resolve_config({"DATASET": "coremof", "TARGET": "AV_VF"})
    results = {"metadata": run_metadata(), "device": str(device), "torch_threads": torch.get_num_threads()}
    if not args.skip_parse:
        results["parse"] = bench_parse()
    results["graphs"] = graph_sizes(coremof.load_coremof(cfg.DATA_ROOT), cfg.CUTOFF, cfg.MAX_STRUCTURE_ATOMS)
    results["training"] = [bench_training(args.structures, budget, device) for budget in args.budgets]
    text = json.dumps(results, indent=2)
    print(text)
    if args.out:
        write_text(args.out, text + "\n")


if __name__ == "__main__":
    run_cli(main)
