"""Exporting SevenNet-0 latents: the package's path (bulk radius graphs on the device, small
batches) against a plain path (each molecule's graph built through ASE and sevenn's own graph
builder, 32 molecules per pass), timed in one process with the repeats interleaved, so a busy
machine slows both alike. Checks that both give the same embedding; prints mol/s and the ratio.

    python benchmarks/bench_pretrained.py --molecules 512 --repeats 3
"""
import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the package modules live in the repo root

import data  # noqa: E402
import pretrained  # noqa: E402
import qm9  # noqa: E402
from cli import resolve_config, run_cli, run_metadata  # noqa: E402
from utils import get_device, write_text  # noqa: E402

PLAIN_BATCH = 32


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--molecules", type=int, default=512, help="seeded random QM9 molecules, as in the dataset")
    parser.add_argument("--repeats", type=int, default=3, help="passes over them per path, interleaved")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[4, 32], help="the package path's batches")
    parser.add_argument("--data-root", help="override DATA_ROOT (where the QM9 cache lives)")
    parser.add_argument("--device", help="cpu, cuda, ... (default: cuda if present)")
    parser.add_argument("--out", type=Path, help="also write the rates and differences here (JSON)")
    return parser.parse_args(argv)


def plain_pass(embedder, molecules):
    """Graphs one molecule at a time through ASE (sevenn's calculator does this), collated by PyG."""
    from ase import Atoms
    from sevenn.atom_graph_data import AtomGraphData
    from sevenn.train.dataload import unlabeled_atoms_to_graph
    from torch_geometric.data import Batch
    parts = []
    for start in range(0, len(molecules), PLAIN_BATCH):
        graphs = [AtomGraphData.from_numpy_dict(unlabeled_atoms_to_graph(Atoms(numbers=z, positions=pos),
                                                                         embedder.cutoff))
                  for z, pos in molecules[start:start + PLAIN_BATCH]]
        batch = Batch.from_data_list(graphs)
        parts.append(embedder.embed_graph(batch, batch.batch, len(graphs))[0])
    return torch.cat(parts)


def package_pass(embedder, structures, batch_size):
    rows = torch.arange(structures.num_molecules, device=structures.z.device)
    return torch.cat([embedder(*structures.gather(chunk)[:3], len(chunk))[0]  # molecules: no cell
                      for chunk in torch.split(rows, batch_size)])


def main(argv=None):
    args = parse_args(argv)
    device = get_device(args.device)
    torch.set_flush_denormal(True)  # as the export script does
    data_root = {"DATA_ROOT": args.data_root} if args.data_root else {}
    cfg = resolve_config({"MAX_STRUCTURES": args.molecules, **data_root})
    arrays = data.seeded_subset(qm9.load_qm9(cfg.DATA_ROOT), cfg.MAX_STRUCTURES, cfg.SEED)
    structures = data.Structures(arrays, qm9.QM9_ATOM_TYPES, device)
    split = np.cumsum(arrays["n_atoms"])[:-1]
    molecules = list(zip(np.split(arrays["z"], split), np.split(arrays["pos"].astype(np.float64), split)))
    embedder = pretrained.load_embedder("sevennet-0", "all", device)
    paths = {"plain (ASE graphs, 32 per pass)": lambda: plain_pass(embedder, molecules)}
    paths.update({f"package, {size} per pass": (lambda size=size: package_pass(embedder, structures, size))
                  for size in args.batch_sizes})
    seconds = {name: [] for name in paths}
    embeddings = {}
    for _ in range(args.repeats):
        for name, run in paths.items():
            start = time.perf_counter()
            embeddings[name] = run()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            seconds[name].append(time.perf_counter() - start)
    plain = next(iter(paths))
    scale = float(embeddings[plain].abs().max())
    rates = {name: args.molecules / np.median(times) for name, times in seconds.items()}
    print(f"{'path':<34} {'mol/s':>8} {'vs plain':>9} {'max diff':>9}  ({args.molecules} molecules, {args.repeats} "
          f"repeats, {device}, {torch.get_num_threads()} threads)")
    differences = {}
    for name, rate in rates.items():
        differences[name] = float((embeddings[name].cpu() - embeddings[plain].cpu()).abs().max()) / scale
        print(f"{name:<34} {rate:8.1f} {rate / rates[plain]:9.2f} {differences[name]:9.1e}")
    if args.out:
        write_text(args.out, json.dumps({"run": {**run_metadata(), "device": str(device), "threads":
                                                 torch.get_num_threads(), "molecules": args.molecules,
                                                 "repeats": args.repeats},
                                         "mol_per_s": rates, "seconds": seconds,
                                         "max_relative_difference": differences}, indent=2))
    return rates, differences


if __name__ == "__main__":
    run_cli(main)
