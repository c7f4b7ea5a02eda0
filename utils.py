"""Shared helpers: seeds, metrics, logging, devices, splits, plots, configs and safe file output."""
import ast
import contextlib
import difflib
import fcntl
import importlib.metadata
import io
import json
import logging
import math
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
import zipfile
from logging.handlers import RotatingFileHandler
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

import configs


class InputError(ValueError):
    """Bad input from the user: the scripts print its one-line message and exit with status 2."""


def first_line(err):
    """The first line of an exception's message, for one-line errors."""
    return (str(err).strip().splitlines() or [type(err).__name__])[0]


def run_cli(main):
    """Run a script's main(); an InputError becomes a one-line message on stderr and exit status 2,
    Ctrl-C a one-line message and the shell's status for it, 130."""
    try:
        main()
    except InputError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("error: interrupted; every file written so far is complete (--resume continues a training run)",
              file=sys.stderr)
        sys.exit(130)


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


# --- metrics (numpy arrays or torch tensors in, Python floats out) -----------------

def _as_float64(x):
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
    return np.asarray(x, dtype=np.float64)


def mae(y_true, y_pred):
    return float(np.mean(np.abs(_as_float64(y_true) - _as_float64(y_pred))))


def rmse(y_true, y_pred):
    return float(np.sqrt(np.mean((_as_float64(y_true) - _as_float64(y_pred)) ** 2)))


def r2(y_true, y_pred):
    y_true, y_pred = _as_float64(y_true), _as_float64(y_pred)
    residual = np.sum((y_true - y_pred) ** 2)
    total = np.sum((y_true - y_true.mean()) ** 2)
    return float(1.0 - residual / total)


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


# --- plots -------------------------------------------------------------------------

def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _save_figure(fig, out_png):
    fig.tight_layout()
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    _pyplot().close(fig)


def save_learning_curves(xs, panels, out_png, ylabel="test MAE (eV)", hline=None, references=None):
    """Log-log learning curves, one panel per title of `panels` {title: {label: ys (runs, len(xs))}}:
    the mean over runs and a geometric +-1 std band (mean times/divided by exp(std of log y)), which
    stays positive. `references` {title: {(source, label): (xs, means)}} adds the curves of other
    runs, in the colour of the same label and one dashed style per source; `hline` = (value, label)
    a horizontal line in every panel."""
    plt = _pyplot()
    import matplotlib.ticker

    labels = list(dict.fromkeys(label for curves in panels.values() for label in curves))
    colours = dict(zip(labels, plt.rcParams["axes.prop_cycle"].by_key()["color"] * len(labels)))
    sources = list(dict.fromkeys(source for curves in (references or {}).values() for source, _ in curves))
    styles = dict(zip(sources, ["--", "-.", ":", (0, (5, 1, 1, 1))] * len(sources)))
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4.5), squeeze=False)
    for ax, (title, curves) in zip(axes[0], panels.items()):
        for label, ys in curves.items():
            ys = np.asarray(ys, dtype=np.float64)
            mean = ys.mean(axis=0)
            spread = np.exp(np.log(ys).std(axis=0))
            ax.plot(xs, mean, marker="o", color=colours[label], label=f"{label} (mean of {len(ys)})")
            ax.fill_between(xs, mean / spread, mean * spread, color=colours[label], alpha=0.15)
        for (source, label), (ref_xs, ref_means) in (references or {}).get(title, {}).items():
            ax.plot(ref_xs, ref_means, linestyle=styles[source], marker="x", color=colours.get(label, "black"),
                    label=f"{label}, {source}")
        if hline is not None:
            ax.axhline(hline[0], color="gray", linestyle=":", label=hline[1])
        ax.set_xscale("log")
        ax.set_yscale("log")
        plain = matplotlib.ticker.FormatStrFormatter("%g")  # 0.3 and 100 rather than 3x10^-1 and 10^2
        for axis in (ax.xaxis, ax.yaxis):
            axis.set_major_formatter(plain)
        ax.yaxis.set_minor_formatter(plain)
        ax.set_xlabel("labelled structures N")
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize="small")
    _save_figure(fig, out_png)


def save_parity(panels, out_png, name="value", unit="eV"):
    """Predicted against true values, one square panel per (row title, column title) of `panels`
    {row: {column: (y_true (T,), y_pred (T,))}}, with the diagonal and the MAE in each panel."""
    plt = _pyplot()
    columns = list(dict.fromkeys(column for row in panels.values() for column in row))
    fig, axes = plt.subplots(len(panels), len(columns), figsize=(3.2 * len(columns), 3.2 * len(panels)),
                             squeeze=False)
    every = np.concatenate([np.concatenate(pair) for row in panels.values() for pair in row.values()])
    limits = (np.percentile(every, 0.05), np.percentile(every, 99.95))
    for ax_row, (row_title, row) in zip(axes, panels.items()):
        for ax, column in zip(ax_row, columns):
            if column not in row:
                ax.set_visible(False)
                continue
            y_true, y_pred = row[column]
            ax.scatter(y_true, y_pred, s=2, alpha=0.25, linewidths=0)
            ax.plot(limits, limits, color="black", linewidth=0.8)
            ax.set_xlim(limits)
            ax.set_ylim(limits)
            ax.set_aspect("equal")
            ax.set_title(f"{row_title}: {column}\nMAE {np.mean(np.abs(y_true - y_pred)):.4g} {unit}", fontsize="small")
            ax.set_xlabel(f"true {name} ({unit})")
            ax.set_ylabel(f"predicted {name} ({unit})")
    _save_figure(fig, out_png)


def save_label_histograms(pool, panels, out_png, name="label", unit="eV"):
    """Density histograms of labels: one row per title of `panels` {title: {label: values}}, one
    panel per label, each drawn over the density of `pool` (all values), so a selection's bias shows."""
    plt = _pyplot()
    pool = np.asarray(pool, dtype=np.float64)
    bins = np.linspace(*np.percentile(pool, [0.1, 99.9]), 41)
    columns = list(dict.fromkeys(label for row in panels.values() for label in row))
    fig, axes = plt.subplots(len(panels), len(columns), figsize=(3.2 * len(columns), 2.8 * len(panels)),
                             squeeze=False, sharex=True)
    for ax_row, (title, histograms) in zip(axes, panels.items()):
        for ax, label in zip(ax_row, columns):
            values = np.asarray(histograms.get(label, []), dtype=np.float64)
            ax.hist(pool, bins=bins, density=True, color="lightgray", label="pool")
            ax.hist(np.clip(values, bins[0], bins[-1]), bins=bins, density=True, histtype="step", linewidth=1.5,
                    label="picks")
            ax.set_title(f"{title}: {label}\n{len(values):,} picks, mean {values.mean():.3g}, std {values.std():.3g}"
                         f"\n(pool {pool.mean():.3g}, {pool.std():.3g} {unit})", fontsize="small")
            ax.set_yticks([])
        ax_row[0].legend(fontsize="small")
    for ax in axes[-1]:
        ax.set_xlabel(f"{name} ({unit})")
    _save_figure(fig, out_png)


# --- configs -----------------------------------------------------------------------

def default_config():
    """Every upper-case constant of configs.py, as a namespace."""
    return SimpleNamespace(**{k: getattr(configs, k) for k in dir(configs) if k.isupper() and not k.startswith("_")})


def _is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


# 0 is meaningful here: lower the rate after any epoch without improvement; the untrained encoder
MAY_BE_ZERO = {"ENC_LR_PATIENCE", "ENC_EPOCHS"}
SEED_KEYS = {"SEED", "SAMPLING_SEEDS"}
NONE_DEFAULT_EXAMPLES = {"ATOM_TYPES": ("H",)}  # settings whose None default stands for a list
MAX_SEED = 2**32 - 1  # numpy's legacy seeding, which set_seed uses, takes no larger seed


def _coerce_scalar(name, value, default):
    """One value of the type of `default`: ints pass for floats; a number must be finite, positive
    where the default is (sizes, rates, counts), non-negative where it is zero or in MAY_BE_ZERO,
    and a seed at most MAX_SEED."""
    if isinstance(default, float) and _is_number(value):
        value = float(value)
    if type(value) is not type(default):
        raise InputError(f"{name}={value!r}: expected {type(default).__name__}, like the default {default!r}")
    if isinstance(value, float) and not math.isfinite(value):
        raise InputError(f"{name}={value!r}: expected a finite number")
    if name in SEED_KEYS and not 0 <= value <= MAX_SEED:
        raise InputError(f"{name}={value!r}: expected a seed in 0..{MAX_SEED}")
    if _is_number(default):
        positive = default > 0 and name not in MAY_BE_ZERO
        if value < 0 or (positive and value == 0):
            raise InputError(f"{name}={value!r}: expected a {'positive' if positive else 'non-negative'} number")
    return value


def _coerce(name, value, default):
    """`value` checked against the default of `name` (type, element types, sign), or an InputError."""
    if default is None:  # optional: None, or a value like the example of NONE_DEFAULT_EXAMPLES (a count by default)
        return None if value is None else _coerce(name, value, NONE_DEFAULT_EXAMPLES.get(name, 1))
    if isinstance(default, (tuple, list)):
        if isinstance(value, str) and isinstance(default[0], str):  # one name stands for a list of one
            value = [value]
        if not isinstance(value, (tuple, list)):
            raise InputError(f"{name}={value!r}: expected a list, like the default {default!r}")
        return type(default)(_coerce_scalar(name, item, default[0]) for item in value)
    if isinstance(default, dict):
        if not isinstance(value, dict):
            raise InputError(f"{name}={value!r}: expected a dict, like the default {default!r}")
        return {key: _coerce_scalar(f"{name}[{key!r}]", weight, next(iter(default.values())))
                for key, weight in value.items()}
    return _coerce_scalar(name, value, default)


def resolve_config(overrides=None, base=None):
    """`base` (default: configs.py) with `overrides` {NAME: value or string} applied; unknown names are errors."""
    cfg = base or default_config()
    defaults = vars(default_config())
    for name, value in (overrides or {}).items():
        if name not in defaults:
            close = difflib.get_close_matches(name, defaults, n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise InputError(f"unknown config key {name!r}{hint}; see configs.py")
        setattr(cfg, name, _coerce(name, value, defaults[name]))
    return cfg


def config_from_json(text, source):
    """A config saved by a run (JSON), checked against configs.py like command-line overrides. Keys
    added to configs.py since the run was made take their defaults, so older runs still resume."""
    try:
        saved = json.loads(text)
    except json.JSONDecodeError as err:
        raise InputError(f"{source}: config is not valid JSON ({err})") from None
    if not isinstance(saved, dict):
        raise InputError(f"{source}: config is {type(saved).__name__}, expected a JSON object of settings")
    return resolve_config(saved)


def _literal(text):
    """A Python literal (number, list, dict, quoted string...), or the text itself (a path, irreps)."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def add_run_arguments(parser):
    """The options both scripts take: --out-dir, --set and --device."""
    parser.add_argument("--out-dir", type=Path, help="run folder (default: a new timestamped folder in OUTPUT_DIR)")
    parser.add_argument("--set", action="append", metavar="NAME=VALUE", help="override any configs.py constant")
    parser.add_argument("--device", help="torch device (default: cuda if available, else cpu)")


def overrides_from_args(flags, set_pairs):
    """{NAME: value} of the named flags that were given ({NAME: value or None}), then of --set."""
    overrides = {name: value for name, value in flags.items() if value is not None}
    overrides.update(parse_set_args(set_pairs))
    return overrides


def parse_set_args(pairs):
    """['NAME=VALUE', ...] from --set into {NAME: value}; resolve_config checks each value's type."""
    overrides = {}
    for pair in pairs or []:
        name, sep, value = pair.partition("=")
        if not sep:
            raise InputError(f"--set {pair!r}: expected NAME=VALUE")
        overrides[name.strip()] = _literal(value.strip())
    return overrides


def config_json(cfg, **extra):
    """The settings (and `extra` keys, such as what made a latents file) as sorted, indented JSON."""
    return json.dumps({**vars(cfg), **extra}, indent=2, sort_keys=True)


# --- run folders and safe file output ----------------------------------------------

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


def write_text(path, text):
    write_bytes(path, text.encode())


def default_run_dir(cfg, prefix):
    return Path(cfg.OUTPUT_DIR) / time.strftime(f"{prefix}_%Y%m%d-%H%M%S")


def stale_temporaries(out_dir):
    """The temporary files of atomic_path in `out_dir`; while no run holds its lock, a killed run's."""
    return list(out_dir.glob(f".*{TEMPORARY_SUFFIX}"))


def check_new_run_dir(out_dir):
    """A new run goes into an empty or absent folder that it can make: checked before the run's real
    work, and again under the lock. Never over another run's files."""
    out_dir = Path(out_dir)
    existing = next(folder for folder in (out_dir, *out_dir.parents) if folder.exists())
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        reason = "Not a directory" if not existing.is_dir() else "Permission denied"
        raise InputError(f"output directory {out_dir}: not writable ({reason})")
    if existing == out_dir and set(out_dir.iterdir()) - set(stale_temporaries(out_dir)):
        raise InputError(f"{out_dir}: already holds files of a run; choose another --out-dir "
                         "(or --resume, for an encoder run)")


@contextlib.contextmanager
def run_folder(out_dir, resume=False):
    """The run folder, created if needed and locked for as long as the run is in it: a second run
    into the same folder fails at once. A new run needs it empty. Temporary files that a killed run
    left behind are removed. The lock is the kernel's, so it dies with the process."""
    out_dir = prepare_run_dir(out_dir)
    handle = os.open(out_dir, os.O_RDONLY)
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise InputError(f"{out_dir}: another run is writing into this folder now") from None
        if not resume:
            check_new_run_dir(out_dir)
        for stale in stale_temporaries(out_dir):
            stale.unlink()
        yield out_dir
    finally:
        os.close(handle)


def saved_config(out_dir):
    """The config a run saved in `out_dir`, for --resume."""
    saved = Path(out_dir) / "config.json"
    if not saved.is_file():
        raise InputError(f"{saved}: not found; --resume needs a run folder written by this script")
    return config_from_json(saved.read_text(), saved)


def run_info_name(resume):
    """run_info.json for a new run; a resumed run adds a file of its own, named by its start."""
    return f"run_info_resume_{time.strftime('%Y%m%d-%H%M%S')}.json" if resume else "run_info.json"


def start_run(cfg, out_dir, prefix, log_name, info_name="run_info.json", **info):
    """In a locked run folder: the logger, config.json and run info (git commit, package versions
    and `info`). Returns the logger."""
    logger = get_logger(prefix, out_dir / log_name)
    write_text(out_dir / "config.json", config_json(cfg))
    write_text(out_dir / info_name, json.dumps({**run_metadata(), **info}, indent=2))
    logger.info("run folder %s; config %s", out_dir, json.dumps(vars(cfg), sort_keys=True))
    return logger


def prepare_run_dir(out_dir):
    """Create `out_dir` and check that files can be written there."""
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out_dir):
            pass
    except OSError as err:
        raise InputError(f"output directory {out_dir}: not writable ({err.strerror})") from None
    return out_dir


def run_metadata():
    """Git commit and package versions, so that a run folder says what produced it."""
    repo = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True,
                                text=True, check=True).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo,
                                    capture_output=True, text=True, check=True).stdout.strip())
    except (OSError, subprocess.CalledProcessError):
        commit, dirty = "not a git checkout", None
    packages = ["torch", "e3nn", "torch_geometric", "numpy", "pandas", "scipy", "matplotlib"]
    return {
        "git_commit": commit,
        "git_dirty": dirty,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cuda_device": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "packages": {name: importlib.metadata.version(name) for name in packages},
        "argv": sys.argv,
    }
