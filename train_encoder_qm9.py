"""Self-supervised training of the E(3)-equivariant encoder on the structures of DATASET (QM9
molecules by default, or CoRE MOF crystals; no labels), then the latents of every structure into
latents_<DATASET>.npz.

The encoder learns to predict label-free structure descriptors (atom counts, distance and angle
histograms) through an invariant decoder and, optionally, the noise added to atom positions through
an equivariant vector head, or each atom's features in a frozen pretrained potential (TEACHER_WEIGHT:
a distilled student). The TARGET property (HOMO energies for QM9) is read only to be stored
beside the latents.

    python train_encoder_qm9.py --max-structures 2000 --epochs 3 --out-dir runs/quick
    python train_encoder_qm9.py --out-dir runs/full            # all of QM9, best on a GPU
    python train_encoder_qm9.py --out-dir runs/full --resume --epochs 150
    python train_encoder_qm9.py --out-dir runs/untrained --epochs 0     # control: the untrained encoder
    python train_encoder_qm9.py --out-dir runs/descriptors --descriptor-latents  # control: the targets
    python train_encoder_qm9.py --out-dir runs/student --set TEACHER_WEIGHT=1.0   # distilled from SevenNet-0
    python train_encoder_qm9.py --dataset coremof --target AV_VF --max-structures 300 --epochs 3 --out-dir runs/mof
    python train_encoder_qm9.py --dataset pool.extxyz --target gap --out-dir runs/pool   # your own structures
"""
import argparse
import contextlib
from types import SimpleNamespace

import torch

import data
import descriptors
import distributed
from atom_targets import check_atom_descriptor
from cli import (add_run_arguments, check_new_run_dir, default_run_dir, overrides_from_args, resolve_config, run_cli,
                 run_folder, run_info_name, saved_config, start_run)
from models import EquivGNNEncoder
from teacher_targets import check_teacher
from training import (LAST, check_ranks, encoder_hparams, export_descriptor_latents, load_last, log_data,
                      neighbors_within_cutoff, prepare_data, train)
from utils import InputError, check_split_ratios, get_device, quiet_logger


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", help="override DATASET: qm9, coremof or the path of a structure file ASE reads")
    parser.add_argument("--target", help="override TARGET, the property stored beside the latents (for a structure "
                                         "file, the atoms.info key; structures without it are unlabelled)")
    parser.add_argument("--data-root", help="override DATA_ROOT (where the dataset cache lives)")
    parser.add_argument("--max-structures", "--max-molecules", dest="max_molecules", type=int,
                        help="override MAX_STRUCTURES: a seeded subset")
    parser.add_argument("--epochs", type=int, help="override ENC_EPOCHS (with --resume: train on to this epoch)")
    parser.add_argument("--batch-size", type=int, help="override ENC_BATCH_SIZE")
    parser.add_argument("--lr", type=float, help="override ENC_LR")
    parser.add_argument("--seed", type=int, help="override SEED")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out-dir from its last.pt")
    parser.add_argument("--descriptor-latents", action="store_true",
                        help="a control: write the standardized descriptor targets as the latents, no encoder")
    add_run_arguments(parser)
    return parser.parse_args(argv)


def config_from_args(args):
    """The resolved config: configs.py with the flags applied, or the saved config of a resumed run."""
    flags = {"DATASET": args.dataset, "TARGET": args.target, "DATA_ROOT": args.data_root,
             "MAX_STRUCTURES": args.max_molecules, "ENC_EPOCHS": args.epochs,
             "ENC_BATCH_SIZE": args.batch_size, "ENC_LR": args.lr, "SEED": args.seed}
    overrides = overrides_from_args(flags, args.set)
    if not args.resume:
        return resolve_config(overrides)
    if args.out_dir is None:
        raise InputError("--resume needs --out-dir, the run folder to continue")
    if args.descriptor_latents:
        raise InputError("--descriptor-latents trains nothing, so there is nothing to resume")
    changed = sorted(set(overrides) - {"ENC_EPOCHS"})
    if changed:
        raise InputError(f"--resume continues the saved config; only --epochs may change, not {changed}")
    return resolve_config(overrides, base=saved_config(args.out_dir))


def check_config(cfg):
    """Fail before any data is read if the settings cannot work: dataset and target, irreps, pooling,
    element symbols, targets, histogram bins, per-atom descriptor, teacher, mask fraction, split and
    learning-rate schedule (types and signs are checked on loading)."""
    data.check_dataset_settings(cfg)
    known_types = SimpleNamespace(**{**vars(cfg), "ATOM_TYPES": cfg.ATOM_TYPES or ["H"]})  # None: from the data
    EquivGNNEncoder(**encoder_hparams(known_types, avg_num_neighbors=1.0, periodic=False))
    descriptors.descriptor_sizes(known_types)
    descriptors.check_histogram_settings(cfg)
    check_atom_descriptor(cfg)
    check_teacher(cfg)
    check_split_ratios(cfg.TRAIN_VAL_TEST_SPLIT)
    if cfg.BOND_TOLERANCE < 1:
        raise InputError(f"BOND_TOLERANCE={cfg.BOND_TOLERANCE}: expected at least 1, a multiple of the covalent "
                         "radii that every bond reaches")
    if cfg.MASK_FRACTION > 1:
        raise InputError(f"MASK_FRACTION={cfg.MASK_FRACTION}: expected a fraction of the atoms, in (0, 1]")
    if cfg.ENC_LR_FACTOR >= 1:
        raise InputError(f"ENC_LR_FACTOR={cfg.ENC_LR_FACTOR}: expected a factor below 1")


def main(argv=None):
    """Every setting and the data are checked before the run folder is made or, on --resume, touched.
    Under torchrun every process runs this; rank 0 alone makes, locks and writes the run folder."""
    args = parse_args(argv)
    cfg = config_from_args(args)
    check_config(cfg)
    # Smeared-histogram tails and the Adam state of near-empty descriptor columns fall below float32's
    # normal range; CPU arithmetic on such denormals is up to 100 times slower. Zero is as good here.
    torch.set_flush_denormal(True)
    ranks, device = distributed.start(get_device(args.device), cfg.DIST_TIMEOUT_S)
    try:
        out_dir = args.out_dir or default_run_dir(cfg, "encoder")
        if ranks.is_main and not args.resume:
            check_new_run_dir(out_dir)
        prepared = prepare_data(cfg, device)
        cfg = prepared.cfg
        check_ranks(cfg, prepared, ranks)
        avg_neighbors = None if args.resume else neighbors_within_cutoff(prepared, cfg, device)
        main_folder = run_folder(out_dir, resume=args.resume, resumable=[LAST])
        with main_folder if ranks.is_main else contextlib.nullcontext():
            checkpoint = load_last(out_dir, cfg, device) if args.resume else None
            if checkpoint is not None:
                avg_neighbors = checkpoint["encoder_hparams"]["avg_num_neighbors"]
            elif args.resume:  # stopped before its first checkpoint: nothing trained yet, so start over
                avg_neighbors = neighbors_within_cutoff(prepared, cfg, device)
            if ranks.is_main:
                logger = start_run(cfg, out_dir, "encoder", "train.log", run_info_name(args.resume),
                                   processes=ranks.world)
                log_data(prepared, device, logger)
                if args.resume and checkpoint is None:
                    logger.info("%s holds no %s: the run stopped before its first checkpoint; it starts over",
                                out_dir, LAST)
            else:
                logger = quiet_logger(f"encoder.rank{ranks.rank}")
            if not args.descriptor_latents:
                train(cfg, prepared, checkpoint, avg_neighbors, out_dir, device, logger, ranks)
            elif ranks.is_main:
                export_descriptor_latents(out_dir, prepared, cfg, logger)
    finally:
        distributed.stop(ranks)


if __name__ == "__main__":
    run_cli(main)
