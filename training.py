"""Self-supervised training of the encoder on structures only: the model that trains (encoder,
descriptor decoder, optional denoising, per-atom, mask and teacher heads), its losses, the epoch loop on one or several
processes, the checkpoints, and the latents of every structure."""
import math
import time
from types import SimpleNamespace

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

import data
import descriptors
from atom_targets import atom_target_width, atom_targets
from cli import config_from_json, config_json
from data import load_structures
from distributed import Ranks
from graphs import neighbour_graph
from latents import latents_name, write_latents
from models import MASK_Z, POOLINGS, AtomHead, EquivDecoder, EquivGNNEncoder, VectorHead
from teacher_targets import describe_teacher, teacher_targets
from utils import InputError, first_line, save_torch, set_seed, train_val_test_split_indices

BEST_ENCODER, BEST_DECODER, LAST = "encoder_struct.pt", "decoder_struct.pt", "last.pt"
HEADS = ("vector_head", "atom_head", "mask_head", "teacher_head")  # the Autoencoder's optional heads, saved in
# last.pt (None: off)


def average_neighbors(structures, rows, cutoff, batch_size, max_atoms):
    """Mean number of neighbours within the cutoff per atom, over the structures `rows`."""
    edges = atoms = 0
    for chunk in structures.batches(rows, batch_size, max_atoms):
        _, pos, batch, cell = structures.gather(chunk)
        edges += neighbour_graph(pos, batch, cutoff, cell)[0].shape[1]
        atoms += len(batch)
    return edges / atoms


def encoder_hparams(cfg, avg_num_neighbors, periodic):
    """Everything EquivGNNEncoder needs, as primitives stored in every checkpoint; `periodic`:
    crystals, whose latent averages over atoms (a supercell has the latent of its cell)."""
    return {"atom_types": list(cfg.ATOM_TYPES), "hidden_irreps": cfg.ENC_HIDDEN_IRREPS,
            "num_layers": cfg.ENC_NUM_LAYERS, "latent_dim": cfg.LATENT_DIM, "cutoff": cfg.CUTOFF,
            "num_radial_basis": cfg.NUM_RADIAL_BASIS, "radial_hidden_dim": cfg.RADIAL_HIDDEN_DIM,
            "avg_num_neighbors": avg_num_neighbors, "readout": cfg.LATENT_READOUT,
            "keep_vectors": cfg.DENOISE_WEIGHT > 0, "pooling": latent_pooling(cfg, periodic),
            "mask_token": cfg.MASK_WEIGHT > 0}


def latent_pooling(cfg, periodic):
    """LATENT_POOLING, with "auto" resolved: periodic structures average, molecules sum."""
    if cfg.LATENT_POOLING not in ("auto", *POOLINGS):
        raise InputError(f"LATENT_POOLING={cfg.LATENT_POOLING!r}: expected one of {['auto', *POOLINGS]}")
    if cfg.LATENT_POOLING != "auto":
        return cfg.LATENT_POOLING
    return "mean" if periodic else "sum"


def decoder_hparams(cfg, out_dim):
    return {"latent_dim": cfg.LATENT_DIM, "hidden_dim": cfg.DEC_HIDDEN_DIM, "out_dim": out_dim}


def load_encoder(path, device="cpu"):
    """The encoder of a checkpoint, rebuilt from its saved hyperparameters, in eval mode."""
    return encoder_from(torch.load(path, map_location=device, weights_only=True), device)


def encoder_from(checkpoint, device):
    """The encoder of a loaded encoder_struct.pt, in eval mode."""
    encoder = EquivGNNEncoder(**checkpoint["hparams"]).to(device)
    encoder.load_state_dict(checkpoint["state_dict"])
    return encoder.eval()


def group_losses(prediction, target, sizes):
    """Mean squared error of each descriptor group: {name: scalar tensor}."""
    errors = ((prediction - target) ** 2).split(list(sizes.values()), dim=1)
    return {name: error.mean() for name, error in zip(sizes, errors)}


def weighted_total(losses, weights):
    return sum(weights[name] * loss for name, loss in losses.items())


def loss_weights(cfg):
    """Weight of every loss group, in the order batch_losses returns them: the descriptor groups,
    then denoising, per-atom targets, the teacher's features and masked atoms, each if it is on."""
    weights = {name: cfg.DESCRIPTOR_WEIGHTS[name] for name in descriptors.descriptor_sizes(cfg)}
    optional = {"denoise": cfg.DENOISE_WEIGHT, "atom_targets": cfg.ATOM_TARGET_WEIGHT, "teacher": cfg.TEACHER_WEIGHT,
                "masked_atoms": cfg.MASK_WEIGHT}
    return {**weights, **{name: weight for name, weight in optional.items() if weight > 0}}


def make_optimizer(cfg, params, device):
    optimizer = torch.optim.Adam(params, lr=cfg.ENC_LR, fused=device.type == "cuda")
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, factor=cfg.ENC_LR_FACTOR,
                                                           patience=cfg.ENC_LR_PATIENCE)
    return optimizer, scheduler


def epoch_order(train_rows, seed, epoch):
    """The shuffled training rows of one epoch; a pure function of (seed, epoch), so a resumed run
    sees the same batches as an uninterrupted one."""
    # a stride above any epoch count keeps the generator seed of every (seed, epoch) distinct
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return train_rows[torch.randperm(len(train_rows), generator=generator).to(train_rows.device)]

TRAIN_NOISE, VALIDATION_NOISE = 1, 0  # streams of position noise and masks, apart from any other random draw
MASK_DRAW = 1  # sets the atom masks apart from the position noise of the same (SEED, stream, epoch)


def draw_generator(*entropy):
    """A CPU generator seeded by a hash of `entropy` (SEED, stream, epoch, ...)."""
    return torch.Generator().manual_seed(int(np.random.SeedSequence(list(entropy)).generate_state(1, np.uint64)[0]))


def position_noise(structures, cfg, stream, epoch=0):
    """Unit Gaussian noise for every atom's position (A, 3), a pure function of (SEED, stream,
    epoch) drawn on the CPU, so a resumed run and any number of processes see the same noise;
    None when denoising is off."""
    if cfg.DENOISE_WEIGHT == 0:
        return None
    generator = draw_generator(cfg.SEED, stream, epoch)
    return torch.randn(structures.pos.shape, generator=generator).to(structures.pos.device)


def atom_mask(structures, cfg, stream, epoch=0):
    """Which atoms are masked (A,) bool, MASK_FRACTION of them at random: a pure function of (SEED,
    stream, epoch) drawn on the CPU like position_noise; None when masked atoms are off."""
    if cfg.MASK_WEIGHT == 0:
        return None
    generator = draw_generator(cfg.SEED, stream, epoch, MASK_DRAW)
    return (torch.rand(len(structures.z), generator=generator) < cfg.MASK_FRACTION).to(structures.z.device)


def epoch_draws(structures, cfg, stream, epoch=0):
    """The random inputs of one epoch (or, for VALIDATION_NOISE, of every validation): position
    noise (A, 3) and atom mask (A,), each None when its objective is off."""
    return SimpleNamespace(noise=position_noise(structures, cfg, stream, epoch),
                           mask=atom_mask(structures, cfg, stream, epoch))


NO_DRAWS = SimpleNamespace(noise=None, mask=None)  # clean structures: no position noise, no masked atoms


class Autoencoder(nn.Module):
    """Structure -> latent -> descriptors; with a vector head each atom's position noise, with an
    atom head each atom's local descriptor, with a mask head each atom's element, with a teacher head
    each atom's features in a frozen pretrained potential: the models that train, as one module."""

    def __init__(self, encoder, decoder, vector_head=None, atom_head=None, mask_head=None, teacher_head=None):
        super().__init__()
        self.encoder, self.decoder, self.vector_head = encoder, decoder, vector_head
        self.atom_head, self.mask_head, self.teacher_head = atom_head, mask_head, teacher_head

    def forward(self, z, pos, batch, cell=None):
        """descriptors (B, width); vectors (A, 3), atom_targets (A, atom width), element_logits
        (A, types) and teacher (A, teacher width), each None without its head."""
        latent, last_features, atom_features = self.encoder.encode(z, pos, batch, cell)

        def per_atom(head):
            return None if head is None else head(atom_features)

        return SimpleNamespace(
            descriptors=self.decoder(latent),
            vectors=None if self.vector_head is None else self.vector_head(last_features),
            atom_targets=per_atom(self.atom_head), element_logits=per_atom(self.mask_head),
            teacher=per_atom(self.teacher_head))


def batch_losses(model, structures, targets, rows, draws, sizes, sigma):
    """Per-group losses of molecules `rows`: each descriptor group's MSE; given draws.noise (all
    atoms, in units of sigma), the MSE of the noise predicted from the displaced positions; with
    per-atom targets (structures.atom_targets) and with the teacher's (structures.teacher_targets),
    their MSE; given draws.mask, the cross-entropy of the masked atoms' elements, predicted with
    their element hidden (MASK_Z)."""
    atoms, batch = structures.atoms_of(rows)
    noise, mask = draws.noise, draws.mask
    pos = structures.pos[atoms] if noise is None else structures.pos[atoms] + sigma * noise[atoms]
    z = structures.z[atoms] if mask is None else torch.where(mask[atoms], MASK_Z, structures.z[atoms])
    out = model(z, pos, batch, structures.cells_of(rows))
    losses = group_losses(out.descriptors, targets[rows], sizes)
    if noise is not None:
        losses["denoise"] = ((out.vectors - noise[atoms]) ** 2).mean()
    for name, predicted, wanted in (("atom_targets", out.atom_targets, structures.atom_targets),
                                    ("teacher", out.teacher, structures.teacher_targets)):
        if predicted is not None:
            losses[name] = ((predicted - wanted[atoms]) ** 2).mean()
    if mask is not None:
        masked = mask[atoms]  # a batch without a masked atom adds 0, not the NaN of an empty mean
        losses["masked_atoms"] = nn.functional.cross_entropy(
            out.element_logits[masked], structures.types[atoms][masked], reduction="sum") / masked.sum().clamp(min=1)
    return losses


def train_epoch(model, optimizer, structures, targets, rows, cfg, draws=NO_DRAWS, ranks=Ranks()):
    """One pass over `rows` in shuffled batches of ENC_BATCH_SIZE structures (fewer where
    BATCH_MAX_ATOMS ends a batch early), each rank training on its
    share of every batch; returns the mean weighted loss over all ranks (a 0-d tensor). `draws`: the
    epoch's epoch_draws.

    Each rank's loss is weighted by its share of the batch, times the number of ranks that
    DistributedDataParallel divides the summed gradients by: the step is then that of the whole
    batch in one process. A batch with fewer molecules than ranks is skipped; an epoch that skips
    every batch is an error (every rank sees the same batches, so every rank stops)."""
    model.train()
    sizes = descriptors.descriptor_sizes(cfg)
    total, trained = torch.zeros((), device=targets.device), 0
    for chunk in tqdm(structures.batches(rows, cfg.ENC_BATCH_SIZE, cfg.BATCH_MAX_ATOMS), desc="batches", leave=False,
                      disable=None if ranks.is_main else True):
        if len(chunk) < ranks.world:
            continue
        mine = ranks.share(chunk)
        loss = weighted_total(batch_losses(model, structures, targets, mine, draws, sizes, cfg.DENOISE_SIGMA),
                              loss_weights(cfg))
        optimizer.zero_grad(set_to_none=True)
        (loss * (ranks.world * len(mine) / len(chunk))).backward()
        optimizer.step()
        total += loss.detach() * len(mine)
        trained += len(chunk)
    if trained == 0:
        raise InputError(f"{ranks.world} processes: no training batch holds a structure for each process; expected "
                         f"BATCH_MAX_ATOMS={cfg.BATCH_MAX_ATOMS} to fit {ranks.world} structures at least")
    return ranks.all_sum(total) / trained


@torch.no_grad()
def evaluate(model, structures, targets, rows, cfg, draws=NO_DRAWS, ranks=Ranks()):
    """Per-group losses on `rows` and their weighted total, as Python floats, the same on every rank:
    each rank evaluates its share and the sums are added across ranks (each batch's losses weighted
    by its molecules). `draws`: the fixed validation epoch_draws."""
    model.eval()
    sizes, weights = descriptors.descriptor_sizes(cfg), loss_weights(cfg)
    sums = torch.zeros(len(weights), device=targets.device)
    for chunk in structures.batches(ranks.share(rows), cfg.EVAL_BATCH_SIZE, cfg.BATCH_MAX_ATOMS):
        losses = batch_losses(model, structures, targets, chunk, draws, sizes, cfg.DENOISE_SIGMA)
        sums = sums + torch.stack(list(losses.values())) * len(chunk)
    losses = dict(zip(weights, (ranks.all_sum(sums).double() / len(rows)).tolist()))
    return weighted_total(losses, weights), losses


@torch.no_grad()
def extract_latents(encoder, structures, batch_size, max_atoms):
    """Latents of every structure, (M, latent_dim) float32 numpy, in eval mode and batched."""
    encoder.eval()
    rows = torch.arange(structures.num_molecules, device=structures.z.device)
    latents = [encoder(*structures.gather(chunk)) for chunk in structures.batches(rows, batch_size, max_atoms)]
    return torch.cat(latents).float().cpu().numpy()


def save_last(out_dir, model, optimizer, scheduler, epoch, best_val, enc_hparams, dec_hparams, cfg):
    """last.pt: everything --resume needs to continue exactly where the run stopped."""
    save_torch(out_dir / LAST, {
        "encoder": model.encoder.state_dict(), "decoder": model.decoder.state_dict(),
        **{name: None if getattr(model, name) is None else getattr(model, name).state_dict() for name in HEADS},
        "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "epoch": epoch,
        "best_val": best_val, "encoder_hparams": enc_hparams, "decoder_hparams": dec_hparams,
        "config": config_json(cfg)})


def save_best(out_dir, encoder, decoder, enc_hparams, dec_hparams, target_stats, epoch, val_loss):
    """The best-so-far encoder and decoder, each loadable on its own."""
    common = {"epoch": epoch, "val_loss": val_loss}
    save_torch(out_dir / BEST_ENCODER, {"hparams": enc_hparams, "state_dict": encoder.state_dict(), **common})
    save_torch(out_dir / BEST_DECODER, {"hparams": dec_hparams, "state_dict": decoder.state_dict(),
                                        "target_mean": target_stats[0].cpu(), "target_std": target_stats[1].cpu(),
                                        **common})


def prepare_data(cfg, device):
    """The structures on the device, their seeded split and standardized targets,
    with every check of the data, so that bad data stops a run before its folder exists. Its `cfg`
    is the run's config, with ATOM_TYPES resolved from the data."""
    arrays, cfg, dropped = load_structures(cfg)
    structures = data.Structures(arrays, cfg.ATOM_TYPES, device)
    split = train_val_test_split_indices(structures.num_molecules, cfg.TRAIN_VAL_TEST_SPLIT, cfg.SEED)
    if len(split[0]) < 2 or len(split[1]) == 0:  # two training molecules at least, to standardize the targets
        raise InputError(f"{structures.num_molecules} molecules with TRAIN_VAL_TEST_SPLIT={cfg.TRAIN_VAL_TEST_SPLIT} "
                         f"leave {len(split[0])} for training and {len(split[1])} for validation; expected at "
                         "least 2 and 1")
    start = time.perf_counter()
    sizes = descriptors.descriptor_sizes(cfg)
    targets, mean, std = descriptors.standardize_targets(descriptors.compute_descriptors(structures, cfg),
                                                  torch.as_tensor(split[0], device=device), sizes)
    descriptor_seconds = time.perf_counter() - start
    train_atoms = structures.atoms_of(torch.as_tensor(split[0], device=device))[0]
    if cfg.ATOM_TARGET_WEIGHT > 0:
        structures.atom_targets = atom_targets(arrays, train_atoms, cfg, device)
    if cfg.TEACHER_WEIGHT > 0:
        structures.teacher_targets = teacher_targets(arrays, train_atoms, cfg, device)
    return SimpleNamespace(cfg=cfg, arrays=arrays, structures=structures, split=split, targets=targets,
                           target_stats=(mean, std), descriptor_sizes=sizes, dropped=dropped,
                           descriptor_seconds=descriptor_seconds,
                           atom_target_seconds=time.perf_counter() - start - descriptor_seconds)


def log_data(prepared, device, logger):
    structures, split, cfg = prepared.structures, prepared.split, prepared.cfg
    logger.info("%s: structures %d (train %d, val %d, test %d), atoms %d, device %s; %d structures above "
                "MAX_STRUCTURE_ATOMS=%d left out", cfg.DATASET, structures.num_molecules, len(split[0]),
                len(split[1]), len(split[2]), len(structures.z), device, prepared.dropped, cfg.MAX_STRUCTURE_ATOMS)
    n_atoms = prepared.arrays["n_atoms"]
    logger.info("atoms per structure: median %d, p90 %d, max %d; ATOM_TYPES %s; histogram classes %s",
                np.median(n_atoms), np.percentile(n_atoms, 90), n_atoms.max(), " ".join(cfg.ATOM_TYPES),
                " ".join(descriptors.histogram_classes(cfg.ATOM_TYPES, cfg.HIST_ELEMENTS)[0]))
    logger.info("descriptor targets %s computed in %.1f s", prepared.descriptor_sizes, prepared.descriptor_seconds)
    per_atom = [name for name, on in (("atom_targets", cfg.ATOM_TARGET_WEIGHT > 0), ("teacher", cfg.TEACHER_WEIGHT > 0))
                if on]
    if per_atom:  # a first run computes them, later ones read their cache under DATA_ROOT
        logger.info("per-atom targets %s ready in %.1f s", " and ".join(per_atom), prepared.atom_target_seconds)


def neighbors_within_cutoff(prepared, cfg, device):
    """The encoder's average neighbour count over the training molecules; none at all is an error."""
    count = average_neighbors(prepared.structures, torch.as_tensor(prepared.split[0], device=device), cfg.CUTOFF,
                              cfg.EVAL_BATCH_SIZE, cfg.BATCH_MAX_ATOMS)
    if count == 0:
        raise InputError(f"CUTOFF={cfg.CUTOFF}: no training atom has a neighbour that close; expected a cutoff "
                         "above the shortest bond length, about 1 Angstrom")
    return count

LAST_KEYS = ("encoder", "decoder", "optimizer", "scheduler", "epoch", "best_val", "encoder_hparams",
             "decoder_hparams", "config")


def load_last(out_dir, cfg, device):
    """The checkpoint that --resume continues, checked against the run's config.json and --epochs;
    None for a run stopped before its first checkpoint, which then starts from the beginning."""
    path = out_dir / LAST
    if not path.is_file():
        if (out_dir / latents_name(cfg.DATASET)).is_file():
            raise InputError(f"{path}: not found beside the latents of {out_dir}; nothing to resume (a "
                             "--descriptor-latents run trains nothing)")
        return None
    try:
        checkpoint = torch.load(path, map_location=device, weights_only=True)
    except Exception as err:  # a damaged file raises whatever its first bad byte trips: zip, pickle or EOF errors
        raise InputError(f"{path}: not a readable checkpoint ({type(err).__name__}: {first_line(err)})") from None
    missing = [key for key in LAST_KEYS if key not in checkpoint] if isinstance(checkpoint, dict) else list(LAST_KEYS)
    if missing:
        raise InputError(f"{path}: lacks {missing}; expected a {LAST} written by this script")
    saved = vars(config_from_json(checkpoint["config"], path))
    changed = sorted(name for name, value in vars(cfg).items() if name != "ENC_EPOCHS" and saved[name] != value)
    if changed:
        raise InputError(f"{path}: its settings {changed} differ from {out_dir / 'config.json'}; it is not this "
                         "run's checkpoint")
    done = checkpoint["epoch"]
    if cfg.ENC_EPOCHS < done:
        raise InputError(f"--epochs {cfg.ENC_EPOCHS}: {out_dir} has already trained {done} epochs; expected more "
                         "epochs to train on")
    if cfg.ENC_EPOCHS == done and (out_dir / latents_name(cfg.DATASET)).is_file():
        raise InputError(f"{out_dir}: finished, all {done} epochs trained and the latents written; pass --epochs "
                         f"above {done} to train on")
    return checkpoint


def build_models(cfg, enc_hparams, dec_hparams, device, checkpoint, teacher_width=None):
    """The Autoencoder (encoder, decoder and the heads of the objectives that are on), optimizer and
    scheduler, restored from `checkpoint` (last.pt) if given; `teacher_width`: the columns of the
    teacher's targets, when TEACHER_WEIGHT > 0. Returns them with the first epoch to train and the
    best validation loss so far."""
    encoder = EquivGNNEncoder(**enc_hparams).to(device)
    if cfg.ENC_COMPILE:
        for layer in encoder.layers:  # the radius graph has data-dependent shapes, so only the layers compile
            layer.compile(dynamic=True)
    decoder = EquivDecoder(**dec_hparams).to(device)
    vector_head = VectorHead(encoder.last_irreps).to(device) if cfg.DENOISE_WEIGHT > 0 else None
    atom_head = AtomHead(cfg.LATENT_DIM, cfg.DEC_HIDDEN_DIM, atom_target_width(cfg)).to(device) \
        if cfg.ATOM_TARGET_WEIGHT > 0 else None
    mask_head = AtomHead(cfg.LATENT_DIM, cfg.DEC_HIDDEN_DIM, len(cfg.ATOM_TYPES)).to(device) \
        if cfg.MASK_WEIGHT > 0 else None
    teacher_head = AtomHead(cfg.LATENT_DIM, cfg.DEC_HIDDEN_DIM, teacher_width).to(device) \
        if cfg.TEACHER_WEIGHT > 0 else None
    model = Autoencoder(encoder, decoder, vector_head, atom_head, mask_head, teacher_head)
    optimizer, scheduler = make_optimizer(cfg, list(model.parameters()), device)
    if checkpoint is None:
        return model, optimizer, scheduler, 0, float("inf")
    try:
        encoder.load_state_dict(checkpoint["encoder"])
        decoder.load_state_dict(checkpoint["decoder"])
        for name in HEADS:
            if getattr(model, name) is not None:
                getattr(model, name).load_state_dict(checkpoint[name])
        optimizer.load_state_dict(checkpoint["optimizer"])
        scheduler.load_state_dict(checkpoint["scheduler"])
    except (RuntimeError, KeyError, ValueError, TypeError) as err:
        raise InputError(f"{LAST}: its weights do not fit the models of the run's config ({first_line(err)})") from None
    return model, optimizer, scheduler, checkpoint["epoch"], checkpoint["best_val"]


def export_latents(out_dir, structures, arrays, split, cfg, device, logger):
    """The latents of every structure from the best encoder, with the target and the split."""
    if not (out_dir / BEST_ENCODER).is_file():
        raise InputError(f"{out_dir}: no best checkpoint; ENC_EPOCHS={cfg.ENC_EPOCHS} trained nothing")
    start = time.perf_counter()
    best = torch.load(out_dir / BEST_ENCODER, map_location=device, weights_only=True)
    latents = extract_latents(encoder_from(best, device), structures, cfg.EVAL_BATCH_SIZE, cfg.BATCH_MAX_ATOMS)
    seconds = time.perf_counter() - start
    logger.info("latents of %d structures in %.1f s (%.0f structures/s)", len(latents), seconds,
                len(latents) / seconds)
    encoder = "encoder" if cfg.TEACHER_WEIGHT == 0 else f"package encoder distilled from {describe_teacher(cfg)}"
    source = f"{encoder} after epoch {best['epoch']}" + (" (untrained)" if best["epoch"] == 0 else "")
    write_latents(out_dir / latents_name(cfg.DATASET), latents, arrays, split, cfg, source)
    log_written(out_dir / latents_name(cfg.DATASET), source, arrays, cfg, logger)


def log_written(path, source, arrays, cfg, logger):
    unit, labels = data.target_unit(cfg), arrays["y"][np.isfinite(arrays["y"])]
    if len(labels) == 0:
        logger.info("wrote %s (%s); no structure has a %s label: an unlabelled pool", path, source, cfg.TARGET)
        return
    logger.info("wrote %s (%s); %s of %d of %d structures: mean %.4g %s, std %.4g %s (not used in training)", path,
                source, cfg.TARGET, len(labels), len(arrays["y"]), labels.mean(), unit, labels.std(), unit)


def export_descriptor_latents(out_dir, prepared, cfg, logger):
    """The control of --descriptor-latents: the standardized descriptor targets as z_all, on the same
    split, so a latent can be judged against the features it was trained to reproduce."""
    source = "descriptor targets " + " + ".join(prepared.descriptor_sizes)
    write_latents(out_dir / latents_name(cfg.DATASET), prepared.targets.float().cpu().numpy(), prepared.arrays,
                  prepared.split, cfg, source)
    log_written(out_dir / latents_name(cfg.DATASET), source, prepared.arrays, cfg, logger)


def train(cfg, prepared, checkpoint, avg_neighbors, out_dir, device, logger, ranks=Ranks()):
    """Models, training with a checkpoint every epoch, then the latents npz. Rank 0 alone
    writes; with several ranks the model trains under DistributedDataParallel. ENC_EPOCHS=0 saves
    and exports the untrained encoder, a control."""
    set_seed(cfg.SEED)
    enc_hparams = encoder_hparams(cfg, avg_neighbors, data.is_periodic(prepared.arrays))
    dec_hparams = decoder_hparams(cfg, prepared.targets.shape[1])
    teacher = prepared.structures.teacher_targets
    model, optimizer, scheduler, first_epoch, best_val = build_models(
        cfg, enc_hparams, dec_hparams, device, checkpoint, teacher_width=None if teacher is None else teacher.shape[1])
    trained = model if ranks.world == 1 else DistributedDataParallel(model, broadcast_buffers=False)
    if checkpoint is not None:
        logger.info("resumed from %s after epoch %d (best val %.5f)", out_dir / LAST, first_epoch, best_val)
    logger.info("encoder %d parameters, average neighbours %.2f; decoder %d parameters; %d process(es)",
                sum(p.numel() for p in model.encoder.parameters()), avg_neighbors,
                sum(p.numel() for p in model.decoder.parameters()), ranks.world)
    train_rows, val_rows = (torch.as_tensor(rows, device=device) for rows in prepared.split[:2])
    structures, targets = prepared.structures, prepared.targets
    val_draws = epoch_draws(structures, cfg, VALIDATION_NOISE)

    def save(epoch, val_loss):
        nonlocal best_val
        if val_loss < best_val:
            best_val = val_loss
            if ranks.is_main:
                save_best(out_dir, model.encoder, model.decoder, enc_hparams, dec_hparams, prepared.target_stats,
                          epoch, val_loss)
        if ranks.is_main:
            save_last(out_dir, model, optimizer, scheduler, epoch, best_val, enc_hparams, dec_hparams, cfg)

    if cfg.ENC_EPOCHS == 0:
        val_loss, val_groups = evaluate(model, structures, targets, val_rows, cfg, val_draws, ranks)
        logger.info("untrained encoder (ENC_EPOCHS=0): val %.5f [%s]", val_loss, format_groups(val_groups))
        save(0, val_loss)
    for epoch in tqdm(range(first_epoch, cfg.ENC_EPOCHS), desc="epochs", disable=None if ranks.is_main else True):
        start = time.perf_counter()
        order = epoch_order(train_rows, cfg.SEED, epoch)
        train_loss = float(train_epoch(trained, optimizer, structures, targets, order,
                                       cfg, epoch_draws(structures, cfg, TRAIN_NOISE, epoch), ranks))
        check_finite(train_loss, "training", epoch)
        val_loss, val_groups = evaluate(model, structures, targets, val_rows, cfg, val_draws, ranks)
        check_finite(val_loss, "validation", epoch)
        scheduler.step(val_loss)
        seconds = time.perf_counter() - start
        logger.info("epoch %4d/%d train %.5f val %.5f [%s] lr %.2e %.1f s %.0f structures/s", epoch + 1, cfg.ENC_EPOCHS,
                    train_loss, val_loss, format_groups(val_groups), optimizer.param_groups[0]["lr"], seconds,
                    len(train_rows) / seconds)
        save(epoch + 1, val_loss)
    if ranks.is_main:
        export_latents(out_dir, prepared.structures, prepared.arrays, prepared.split, cfg, device, logger)


def check_finite(loss, which, epoch):
    """A loss that is not finite stops the run before it saves or exports anything of that epoch;
    the loss is summed over ranks, so every rank stops."""
    if not math.isfinite(loss):
        raise InputError(f"training diverged in epoch {epoch + 1} ({which} loss {loss}); lower ENC_LR")


def format_groups(losses):
    return " ".join(f"{name} {value:.4f}" for name, value in losses.items())


def check_ranks(cfg, prepared, ranks):
    """Every rank needs a molecule of each training batch and of the validation split."""
    if ranks.world > min(cfg.ENC_BATCH_SIZE, len(prepared.split[1])):
        raise InputError(f"{ranks.world} processes: ENC_BATCH_SIZE={cfg.ENC_BATCH_SIZE} and the "
                         f"{len(prepared.split[1])} validation molecules must each be at least one per process")
