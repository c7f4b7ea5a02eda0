"""Latents of a pretrained interatomic potential (SevenNet-0 by default) for every structure of DATASET
(QM9 molecules by default, CoRE MOF crystals, or a structure file; crystals with their own cells), in
the latents_<dataset>.npz format of train_encoder_qm9.py: same SEED, split and labels, so
sampling_mlp_experiment.py runs on them unchanged and its seeds pair with a run on the package's
own latent. A reference: how far a model trained on other data gets.

    pip install -r requirements-pretrained.txt
    python export_pretrained_latents.py --model sevennet-0 --out-dir runs/7net
    python export_pretrained_latents.py --out-dir runs/7net --resume      # after a kill
    python sampling_mlp_experiment.py --latents runs/7net/latents_qm9.npz --out-dir runs/7net/sampling

The export writes its latents in chunks of PRETRAINED_CHUNK_SIZE structures, spread over PRETRAINED_WORKERS
processes of one thread each (the same bits for any number); --resume keeps the finished chunks. The
chunks are removed once latents_qm9.npz is written.
"""
import argparse
import json
import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor, as_completed

import numpy as np
import torch
from tqdm import tqdm

import data
import pretrained
from cli import (add_run_arguments, check_new_run_dir, default_run_dir, overrides_from_args, resolve_config, run_cli,
                 run_folder, run_info_name, saved_config, stale_temporaries, start_run)
from data import load_structures
from latents import latents_name, write_latents
from utils import InputError, atomic_path, check_split_ratios, get_device, load_npz, train_val_test_split_indices

CHUNK_DIR = "chunks"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help=f"override PRETRAINED_MODEL: one of {sorted(pretrained.MODELS)}")
    parser.add_argument("--data-root", help="override DATA_ROOT (where the QM9 cache lives)")
    parser.add_argument("--max-structures", "--max-molecules", type=int,
                        help="override MAX_STRUCTURES: a seeded subset")
    parser.add_argument("--batch-size", type=int, help="override PRETRAINED_BATCH_SIZE")
    parser.add_argument("--seed", type=int, help="override SEED (the split and the subset)")
    parser.add_argument("--resume", action="store_true", help="finish the export in --out-dir, keeping its chunks")
    add_run_arguments(parser)
    return parser.parse_args(argv)


def config_from_args(args):
    flags = {"PRETRAINED_MODEL": args.model, "DATA_ROOT": args.data_root, "MAX_STRUCTURES": args.max_structures,
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
    pretrained.check_model_settings(cfg.PRETRAINED_MODEL, cfg.PRETRAINED_READOUT)
    check_split_ratios(cfg.TRAIN_VAL_TEST_SPLIT)
    return check_workers(cfg.PRETRAINED_WORKERS)


def chunk_rows(num_molecules, cfg, device=None):
    """The structure rows of each chunk, in order."""
    return torch.split(torch.arange(num_molecules, device=device), cfg.PRETRAINED_CHUNK_SIZE)


def chunk_path(out_dir, index):
    return out_dir / CHUNK_DIR / f"chunk_{index:05d}.npz"


def write_chunk(path, embedding, energy):
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, embedding=embedding, energy=energy)


def read_chunk(path, rows, dim):
    """A finished chunk, checked against the structures and the dimension it must hold."""
    chunk = load_npz(path, "latent chunk")
    if set(chunk) != {"embedding", "energy"} or chunk["embedding"].shape != (rows, dim) \
            or chunk["energy"].shape != (rows,):
        raise InputError(f"{path}: expected embedding ({rows}, {dim}) and energy ({rows},); delete it to redo it")
    return chunk


def embed_chunk(embedder, structures, rows, cfg):
    """Embedding (m, dim) and energy (m,) of the structures `rows` (m,), PRETRAINED_BATCH_SIZE per pass, as
    numpy; crystals with their cells."""
    parts = [embed_batch(embedder, structures, batch)
             for batch in structures.batches(rows, cfg.PRETRAINED_BATCH_SIZE, cfg.BATCH_MAX_ATOMS)]
    return (torch.cat(column).cpu().numpy() for column in zip(*parts))


def embed_batch(embedder, structures, rows):
    """One pass of the embedder over the structures `rows` (cell None for molecules)."""
    z, pos, batch, cell = structures.gather(rows)
    return embedder(z, pos, batch, len(rows), cell)


def write_embedded_chunk(embedder, structures, cfg, out_dir, index):
    rows = chunk_rows(structures.num_molecules, cfg, structures.z.device)[index]
    write_chunk(chunk_path(out_dir, index), *embed_chunk(embedder, structures, rows, cfg))
    return index


def missing_chunks(out_dir, chunks, dim):
    """Indices of the chunks not on disk yet. Every finished chunk is checked first, so a damaged one
    stops the run before anything is embedded, and a killed write's temporary file is removed."""
    for stale in stale_temporaries(out_dir / CHUNK_DIR):
        stale.unlink()
    finished = [k for k in range(len(chunks)) if chunk_path(out_dir, k).is_file()]
    for k in finished:
        read_chunk(chunk_path(out_dir, k), len(chunks[k]), dim)
    return [k for k in range(len(chunks)) if k not in finished]


_WORKER = {}  # in a worker process: the config, structures and embedder its chunks use


def start_worker(cfg, device):
    """A worker process: one torch thread, its own copy of the structures and the model."""
    torch.set_num_threads(1)
    torch.set_flush_denormal(True)
    arrays, cfg, _ = load_structures(cfg)
    device = get_device(str(device))
    _WORKER.update(cfg=cfg, structures=data.Structures(arrays, cfg.ATOM_TYPES, device),
                   embedder=pretrained.load_embedder(cfg.PRETRAINED_MODEL, cfg.PRETRAINED_READOUT, device,
                                                     cfg.PRETRAINED_MIRROR_AVERAGE))


def embed_in_worker(out_dir, index):
    return write_embedded_chunk(_WORKER["embedder"], _WORKER["structures"], _WORKER["cfg"], out_dir, index)


def chunks_in_workers(todo, cfg, device, out_dir, workers):
    """Each chunk index of `todo`, as soon as one of `workers` processes has written it."""
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"), initializer=start_worker,
                             initargs=(cfg, device)) as pool:
        for future in as_completed([pool.submit(embed_in_worker, out_dir, k) for k in todo]):
            yield future.result()


def embed_chunks(embedder, structures, cfg, out_dir, logger, workers=1):
    """Embed every structure chunk by chunk, skipping the chunks already on disk: here with one thread, or
    in `workers` processes of one thread each. Either way each chunk is the same passes, so the same
    bits. Returns the number of structures embedded now and the seconds it took."""
    chunks = chunk_rows(structures.num_molecules, cfg, structures.z.device)
    (out_dir / CHUNK_DIR).mkdir(exist_ok=True)
    todo = missing_chunks(out_dir, chunks, embedder.dim)
    torch.set_num_threads(1)
    written = (chunks_in_workers(todo, cfg, structures.z.device, out_dir, workers) if workers > 1 else
               (write_embedded_chunk(embedder, structures, cfg, out_dir, k) for k in todo))
    embedded, start = 0, time.perf_counter()
    with tqdm(total=structures.num_molecules, initial=structures.num_molecules - sum(len(chunks[k]) for k in todo),
              unit="structure", desc="embedding", disable=None) as bar:
        for k in written:
            embedded += len(chunks[k])
            bar.update(len(chunks[k]))
            logger.info("chunk %d of %d written; %d structures in %.0f s so far", k + 1, len(chunks), embedded,
                        time.perf_counter() - start)
    return embedded, time.perf_counter() - start


def check_workers(workers):
    """PRETRAINED_WORKERS, None standing for one per core, checked against the cores this process may use."""
    cores = len(os.sched_getaffinity(0))
    if workers is not None and not 1 <= workers <= cores:
        raise InputError(f"PRETRAINED_WORKERS={workers}: expected 1..{cores}, the CPU cores here (None: one per core)")
    return cores if workers is None else workers


def collect_chunks(out_dir, num_molecules, cfg, dim):
    """Every chunk's embedding and energy, concatenated in structure order."""
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
    workers = check_config(cfg)
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
    data.check_elements(arrays, embedder.elements, data.dataset_source(cfg),
                        pretrained.trained_elements(cfg.PRETRAINED_MODEL, embedder.elements))
    model = pretrained.describe(embedder, cfg.PRETRAINED_MODEL, cfg.PRETRAINED_READOUT)
    with run_folder(out_dir, resume=args.resume, resumable=[CHUNK_DIR]):
        logger = start_run(cfg, out_dir, "pretrained", "export.log", run_info_name(args.resume),
                           latent_model=model, workers=workers)
        logger.info("%d structures on %s; %s", structures.num_molecules, device, json.dumps(model))
        embedded, seconds = embed_chunks(embedder, structures, cfg, out_dir, logger, workers)
        if embedded:
            logger.info("embedded %d structures in %.1f s (%.1f structures/s, %d per batch, %d processes of one thread)",
                        embedded, seconds, embedded / seconds, cfg.PRETRAINED_BATCH_SIZE, workers)
        latents, energy = collect_chunks(out_dir, structures.num_molecules, cfg, embedder.dim)
        source = f"{cfg.PRETRAINED_MODEL} frozen embedding ({cfg.PRETRAINED_READOUT} readout, {embedder.dim} dims)"
        path = out_dir / latents_name(cfg.DATASET)
        write_latents(path, latents, arrays, split, cfg, source, model=model, model_energy_ev=energy)
        remove_chunks(out_dir)
        logger.info("wrote %s (%s); model energy per atom %.3f eV on average", path, source,
                    energy.sum() / len(arrays["z"]))


if __name__ == "__main__":
    run_cli(main)
