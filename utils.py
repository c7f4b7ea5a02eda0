"""Shared helpers: the error every script reports in one line, seeds and devices, standardisation,
logging, the split, and file output that is never half-written (npz, torch, text, CSV, data caches)."""
import contextlib
import importlib.util
import io
import logging
import os
import random
import zipfile
from logging.handlers import RotatingFileHandler
from pathlib import Path

import numpy as np
import torch


class InputError(ValueError):
    """Bad input from the user: the scripts print its one-line message and exit with status 2."""


def first_line(err):
    """The first line of an exception's message, for one-line errors."""
    return (str(err).strip().splitlines() or [type(err).__name__])[0]


# --- reproducibility and hardware --------------------------------------------------

def set_seed(seed):
    """Seed Python, numpy, torch and every CUDA device."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)


def get_device(name=None):
    """The named torch device, or CUDA when present, else the CPU. CUDA matmuls use TF32."""
    try:
        device = torch.device(name or ("cuda" if torch.cuda.is_available() else "cpu"))
    except RuntimeError as err:
        raise InputError(f"--device {name!r}: not a torch device ({err})") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"--device {name!r}: CUDA is not available here")
    try:  # a device that exists but cannot hold and return data (meta, an absent backend) fails here
        torch.ones(2, device=device).sum().item()
    except (RuntimeError, NotImplementedError) as err:
        raise InputError(f"--device {name!r}: cannot hold data ({first_line(err)})") from None
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return device


def std_floor(column_std):
    """A tenth of the root-mean-square of `column_std`: the least std a column may be divided by, so
    that nearly empty columns do not put the few rows that differ hundreds of std or more away."""
    return 0.1 * column_std.square().mean().sqrt()


def standardize(values, fit_rows, min_std=0.0):
    """(values - mean) / std per column of a tensor, with statistics from `fit_rows`; std is raised
    to at least `min_std` (a number or one per column), and constant columns keep std 1.
    Returns (standardized, mean, std)."""
    mean, std = values[fit_rows].mean(dim=0), values[fit_rows].std(dim=0)
    std = torch.maximum(std, torch.as_tensor(min_std, dtype=std.dtype, device=std.device))
    std = torch.where(std > 0, std, torch.ones_like(std))
    return (values - mean) / std, mean, std


# --- logging -----------------------------------------------------------------------

def get_logger(name, log_file=None, max_bytes=10_000_000, backup_count=3):
    """A logger to stderr and, if given, to a rotating log file. Calling it again replaces the handlers."""
    logger = logging.getLogger(name)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    formatter = logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%d %H:%M:%S")
    handlers = [logging.StreamHandler()]
    if log_file is not None:
        handlers.append(RotatingFileHandler(log_file, maxBytes=max_bytes, backupCount=backup_count))
    for handler in handlers:
        handler.setFormatter(formatter)
        logger.addHandler(handler)
    return logger


def quiet_logger(name):
    """A logger of warnings and errors to stderr only: for the processes that do not write the run."""
    logger = get_logger(name)
    logger.setLevel(logging.WARNING)
    return logger


# --- splits ------------------------------------------------------------------------

def check_split_ratios(ratios):
    if len(ratios) != 3 or min(ratios) < 0 or abs(sum(ratios) - 1.0) > 1e-6:
        raise InputError(f"TRAIN_VAL_TEST_SPLIT={tuple(ratios)}: expected three non-negative fractions summing to 1")


def train_val_test_split_indices(n, ratios, seed):
    """Disjoint int64 index arrays (train, val, test) covering 0..n-1, shuffled with `seed`."""
    check_split_ratios(ratios)
    order = np.random.default_rng(seed).permutation(n).astype(np.int64)
    n_train = int(round(ratios[0] * n))
    n_val = int(round(ratios[1] * n))
    return order[:n_train], order[n_train:n_train + n_val], order[n_train + n_val:]


# --- safe file output ----------------------------------------------

TEMPORARY_SUFFIX = ".tmp"


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path beside `path`; on success rename it over `path`, on error delete it,
    so `path` is either the old file or the whole new one. A failed write (a full disk) is an
    InputError naming `path`."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}{TEMPORARY_SUFFIX}")
    try:
        yield tmp
        with open(tmp, "rb") as written:
            os.fsync(written.fileno())  # the data is on disk before the name points at it
        os.replace(tmp, path)
    except BaseException as err:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(err, OSError):
            raise InputError(f"{path}: cannot write ({err.strerror or err}); the previous file, if any, "
                             "is unchanged") from None
        raise


def write_bytes(path, payload):
    with atomic_path(path) as tmp:
        Path(tmp).write_bytes(payload)


def save_torch(path, payload):
    """torch.save into memory, then an atomic write, so a failed write is an OSError that names the
    file rather than an error from inside torch's zip writer."""
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    write_bytes(path, buffer.getbuffer())


NPZ_MAGIC, NPY_MAGIC = b"PK\x03\x04", b"\x93NUMPY"


def load_npz(path, what):
    """All arrays of the npz archive `path` (`what` names it in errors), with no pickled objects."""
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{path}: a folder, expected a {what}")
    if not path.is_file():
        raise InputError(f"{path}: {what} not found")
    with open(path, "rb") as f:
        magic = f.read(6)
    if magic.startswith(NPY_MAGIC):
        raise InputError(f"{path}: a single .npy array, expected a {what} (.npz archive of named arrays)")
    if not magic.startswith(NPZ_MAGIC):
        raise InputError(f"{path}: not an npz archive (no zip header); expected a {what}")
    try:
        with np.load(path, allow_pickle=False) as stored:
            return {key: stored[key] for key in stored.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        raise InputError(f"{path}: damaged {what} ({first_line(err)})") from None


def save_npz(path, arrays, what):
    """Write a compressed npz archive of `arrays` atomically, making its folder; `what` names it in errors."""
    try:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.savez_compressed(f, **arrays)
    except OSError as err:
        raise InputError(f"cannot write the {what} {path} ({err.strerror})") from None


def check_cache_arrays(arrays, source, dtypes, required=()):
    """A cache's arrays hold every key of `dtypes` (with that dtype) and of `required`."""
    missing = [key for key in [*dtypes, *required] if key not in arrays]
    if missing:
        raise InputError(f"{source}: missing arrays {missing}")
    for key, dtype in dtypes.items():
        if arrays[key].dtype != dtype:
            raise InputError(f"{source}: array {key!r} has dtype {arrays[key].dtype}, expected {np.dtype(dtype)}")


def cached_arrays(data_root, cache_name, what, validate, build, built_from):
    """The arrays of the cache `data_root`/`cache_name`, checked by validate(arrays, source); when it
    is absent, build() makes them and they are cached there. `what` names the cache in errors."""
    if Path(data_root).exists() and not Path(data_root).is_dir():
        raise InputError(f"DATA_ROOT {data_root}: a file, expected a folder for the {what}")
    cache = Path(data_root) / cache_name
    if cache.exists():
        try:
            return validate(load_npz(cache, what), cache)
        except InputError as err:
            raise InputError(f"{err}; delete it to rebuild the cache from the {built_from}") from None
    arrays = build()
    save_npz(cache, arrays, what)
    return arrays


def wheel_data_dir(module, package):
    """The data/ folder of an installed data wheel (qm9pack, core-mof), found without importing the
    package: `module` is its import name, `package` its name on the package index."""
    spec = importlib.util.find_spec(module)
    if spec is None:
        raise InputError(f"package {package} is not installed: pip install -r requirements.txt")
    return Path(next(iter(spec.submodule_search_locations))) / "data"


def write_text(path, text):
    write_bytes(path, text.encode())




def write_csv(frame, path):
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)
