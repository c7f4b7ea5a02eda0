"""Latents of a pretrained interatomic potential (SevenNet-0 by default) for every QM9 molecule, in
the latents_qm9.npz format of train_encoder_qm9.py: same SEED, split and HOMO labels, so
sampling_mlp_experiment.py runs on them unchanged and its seeds pair with a run on the package's
own latent. A reference: how far a model that never saw a molecule gets.

    pip install -r requirements-pretrained.txt
    python export_pretrained_latents.py --model sevennet-0 --out-dir runs/7net
    python export_pretrained_latents.py --out-dir runs/7net --resume      # after a kill
    python sampling_mlp_experiment.py --latents runs/7net/latents_qm9.npz --out-dir runs/7net/sampling

The export writes its latents in chunks of PRETRAINED_CHUNK_SIZE molecules; --resume keeps the
finished chunks. The chunks are removed once latents_qm9.npz is written.
"""
import argparse
import json
import time

import numpy as np
import torch
from tqdm import tqdm

import data
import pretrained
from cli import (add_run_arguments, check_new_run_dir, default_run_dir, overrides_from_args, resolve_config, run_cli,
                 run_folder, run_info_name, saved_config, start_run)
from data import load_structures
from latents import latents_name, write_latents
from utils import InputError, atomic_path, check_split_ratios, get_device, load_npz, train_val_test_split_indices

CHUNK_DIR = "chunks"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help=f"override PRETRAINED_MODEL: one of {sorted(pretrained.MODELS)}")
    parser.add_argument("--data-root", help="override DATA_ROOT (where the QM9 cache lives)")
    parser.add_argument("--max-molecules", type=int, help="override MAX_STRUCTURES: a seeded subset")
    parser.add_argument("--batch-size", type=int, help="override PRETRAINED_BATCH_SIZE")
    parser.add_argument("--seed", type=int, help="override SEED (the split and the subset)")
    parser.add_argument("--resume", action="store_true", help="finish the export in --out-dir, keeping its chunks")
    add_run_arguments(parser)
    return parser.parse_args(argv)


def config_from_args(args):
    flags = {"PRETRAINED_MODEL": args.model, "DATA_ROOT": args.data_root, "MAX_STRUCTURES": args.max_molecules,
             "PRETRAINED_BATCH_SIZE": args.batch_size, "SEED": args.seed}
    overrides = overrides_from_args(flags, args.set)
    if not args.resume:
        return resolve_config(overrides)
    if args.out_dir is None:
        raise InputError("--resume needs --out-dir, the export folder to finish")
    if overrides:
        raise InputError(f"--resume finishes the saved config; it takes no settings, got {sorted(overrides)}")
    return saved_config(args.out_dir)


def check_config(cfg):
    data.check_dataset_settings(cfg)
    if cfg.DATASET != "qm9":
        raise InputError(f"DATASET={cfg.DATASET!r}: this export embeds molecules; expected 'qm9' (the periodic path "
                         "for crystals is not built)")
    pretrained.check_model_settings(cfg.PRETRAINED_MODEL, cfg.PRETRAINED_READOUT)
    check_split_ratios(cfg.TRAIN_VAL_TEST_SPLIT)


def chunk_rows(num_molecules, cfg, device=None):
    """The molecule rows of each chunk, in order."""
    return torch.split(torch.arange(num_molecules, device=device), cfg.PRETRAINED_CHUNK_SIZE)


def chunk_path(out_dir, index):
    return out_dir / CHUNK_DIR / f"chunk_{index:05d}.npz"


def write_chunk(path, embedding, energy):
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, embedding=embedding, energy=energy)


def read_chunk(path, rows, dim):
    """A finished chunk, checked against the molecules and the dimension it must hold."""
    chunk = load_npz(path, "latent chunk")
    if set(chunk) != {"embedding", "energy"} or chunk["embedding"].shape != (rows, dim) \
            or chunk["energy"].shape != (rows,):
        raise InputError(f"{path}: expected embedding ({rows}, {dim}) and energy ({rows},); delete it to redo it")
    return chunk


def embed_chunks(embedder, structures, cfg, out_dir, logger):
    """Embed every molecule chunk by chunk, skipping the chunks already on disk. Returns the number
    of molecules embedded now and the seconds it took."""
    chunks = chunk_rows(structures.num_molecules, cfg, structures.z.device)
    todo = [k for k in range(len(chunks)) if not chunk_path(out_dir, k).is_file()]
    (out_dir / CHUNK_DIR).mkdir(exist_ok=True)
    embedded, start = 0, time.perf_counter()
    with tqdm(total=structures.num_molecules, initial=structures.num_molecules - sum(len(chunks[k]) for k in todo),
              unit="mol", desc="embedding", disable=None) as bar:
        for k in todo:
            parts = []
            for rows in structures.batches(chunks[k], cfg.PRETRAINED_BATCH_SIZE, cfg.BATCH_MAX_ATOMS):
                z, pos, batch, _ = structures.gather(rows)  # molecules: no cell
                parts.append(embedder(z, pos, batch, len(rows)))
                bar.update(len(rows))
            embedding, energy = (torch.cat(column).cpu().numpy() for column in zip(*parts))
            write_chunk(chunk_path(out_dir, k), embedding, energy)
            embedded += len(chunks[k])
            logger.info("chunk %d of %d written; %d molecules in %.0f s so far", k + 1, len(chunks), embedded,
                        time.perf_counter() - start)
    return embedded, time.perf_counter() - start


def collect_chunks(out_dir, num_molecules, cfg, dim):
    """Every chunk's embedding and energy, concatenated in molecule order."""
    chunks = [read_chunk(chunk_path(out_dir, k), len(rows), dim)
              for k, rows in enumerate(chunk_rows(num_molecules, cfg))]
    return (np.concatenate([chunk[key] for chunk in chunks]) for key in ("embedding", "energy"))


def remove_chunks(out_dir):
    for path in (out_dir / CHUNK_DIR).glob("chunk_*.npz"):
        path.unlink()
    (out_dir / CHUNK_DIR).rmdir()


def main(argv=None):
    """Settings, data, model and elements are checked before the folder is made or touched."""
    args = parse_args(argv)
    cfg = config_from_args(args)
    check_config(cfg)
    torch.set_flush_denormal(True)  # subnormal float32 arithmetic is many times slower on a CPU; zero is as good
    device = get_device(args.device)
    out_dir = args.out_dir or default_run_dir(cfg, "pretrained")
    if not args.resume:
        check_new_run_dir(out_dir)
    elif (out_dir / latents_name(cfg.DATASET)).is_file():
        raise InputError(f"{out_dir}: this export has finished ({latents_name(cfg.DATASET)} is "
                         "written); nothing to resume")
    arrays, cfg, _ = load_structures(cfg)
    structures = data.Structures(arrays, cfg.ATOM_TYPES, device)
    split = train_val_test_split_indices(structures.num_molecules, cfg.TRAIN_VAL_TEST_SPLIT, cfg.SEED)
    embedder = pretrained.load_embedder(cfg.PRETRAINED_MODEL, cfg.PRETRAINED_READOUT, device,
                                        cfg.PRETRAINED_MIRROR_AVERAGE)
    pretrained.check_elements(arrays["z"], embedder.elements, cfg.PRETRAINED_MODEL)
    model = pretrained.describe(embedder, cfg.PRETRAINED_MODEL, cfg.PRETRAINED_READOUT)
    with run_folder(out_dir, resume=args.resume, resumable=[CHUNK_DIR]):
        logger = start_run(cfg, out_dir, "pretrained", "export.log", run_info_name(args.resume),
                           latent_model=model, torch_threads=torch.get_num_threads())
        logger.info("%d molecules on %s; %s", structures.num_molecules, device, json.dumps(model))
        embedded, seconds = embed_chunks(embedder, structures, cfg, out_dir, logger)
        if embedded:
            logger.info("embedded %d molecules in %.1f s (%.1f mol/s, %d per batch, %d threads)", embedded, seconds,
                        embedded / seconds, cfg.PRETRAINED_BATCH_SIZE, torch.get_num_threads())
        latents, energy = collect_chunks(out_dir, structures.num_molecules, cfg, embedder.dim)
        source = f"{cfg.PRETRAINED_MODEL} frozen embedding ({cfg.PRETRAINED_READOUT} readout, {embedder.dim} dims)"
        path = out_dir / latents_name(cfg.DATASET)
        write_latents(path, latents, arrays, split, cfg, source, model=model, model_energy_ev=energy)
        remove_chunks(out_dir)
        logger.info("wrote %s (%s); model energy per atom %.3f eV on average", path, source,
                    energy.sum() / len(arrays["z"]))


if __name__ == "__main__":
    run_cli(main)
