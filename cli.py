"""What every script shares on the command line: settings resolved from configs.py with typed
overrides (flags and --set), the run folder (made, locked, checked for --resume) and what a run
records about itself (config.json, run_info.json)."""
import ast
import contextlib
import difflib
import errno
import fcntl
import importlib.metadata
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import torch

import configs
from utils import TEMPORARY_SUFFIX, InputError, get_logger, write_text


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


def default_config():
    """Every upper-case constant of configs.py, as a namespace."""
    return SimpleNamespace(**{k: getattr(configs, k) for k in dir(configs) if k.isupper() and not k.startswith("_")})


def _is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


# 0 is meaningful here: lower the rate after any epoch without improvement; the untrained encoder
MAY_BE_ZERO = {"ENC_LR_PATIENCE", "ENC_EPOCHS"}

SEED_KEYS = {"SEED", "SAMPLING_SEEDS"}

NONE_DEFAULT_EXAMPLES = {"ATOM_TYPES": ("H",), "ASE_FORMAT": "extxyz"}  # settings whose None default stands for
# a value of another type than a count

MAX_SEED = 2**32 - 1  # numpy's legacy seeding, which set_seed uses, takes no larger seed

# The list and dict settings that may be empty: no HIST_ELEMENTS puts every element in one histogram class.
# Every other one names things a run needs at least one of (budgets, seeds, heads, widths, ranges...).
MAY_BE_EMPTY = {"HIST_ELEMENTS"}


def check_seed(name, value):
    """A seed in 0..MAX_SEED, or an InputError naming the setting or flag `name`."""
    if not 0 <= value <= MAX_SEED:
        raise InputError(f"{name}={value!r}: expected a seed in 0..{MAX_SEED}")


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
    if name in SEED_KEYS:
        check_seed(name, value)
    if _is_number(default):
        positive = default > 0 and name not in MAY_BE_ZERO
        if value < 0 or (positive and value == 0):
            raise InputError(f"{name}={value!r}: expected a {'positive' if positive else 'non-negative'} number")
    return value


def _coerce(name, value, default):
    """`value` checked against the default of `name` (type, element types, sign; a list or dict not
    empty unless `name` is in MAY_BE_EMPTY), or an InputError."""
    if isinstance(value, (tuple, list, dict)) and not value and name not in MAY_BE_EMPTY:
        raise InputError(f"{name}={value!r}: expected one or more entries")
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


def default_run_dir(cfg, prefix):
    return Path(cfg.OUTPUT_DIR) / time.strftime(f"{prefix}_%Y%m%d-%H%M%S")


def stale_temporaries(out_dir):
    """The temporary files of atomic_path in `out_dir`; while no run holds its lock, a killed run's."""
    return list(out_dir.glob(f".*{TEMPORARY_SUFFIX}"))


def check_writable(out_dir):
    """Files can be made in `out_dir` or, while it does not exist, in the nearest folder above it
    that does: one message, whatever the cause (a file in the way, permissions, a read-only file
    system), for every script."""
    existing = next(folder for folder in (out_dir, *out_dir.parents) if folder.exists())
    try:
        if not existing.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR))
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as err:
        raise InputError(f"output directory {out_dir}: not writable ({err.strerror})") from None


def check_new_run_dir(out_dir):
    """A new run goes into an empty or absent folder that it can make: checked before the run's real
    work, and again under the lock. Never over another run's files."""
    out_dir = Path(out_dir)
    check_writable(out_dir)
    if out_dir.is_dir() and set(out_dir.iterdir()) - set(stale_temporaries(out_dir)):
        raise InputError(f"{out_dir}: already holds files of a run; choose another --out-dir "
                         "(or --resume, for an encoder run)")


@contextlib.contextmanager
def run_folder(out_dir, resume=False, resumable=()):
    """The run folder, created if needed and locked for as long as the run is in it: a second run
    into the same folder fails at once. A new run needs it empty. Temporary files that a killed run
    left behind are removed. The lock is the kernel's, so it dies with the process.

    A new run that stops on an InputError (bad input found late: divergence, a full disk) removes
    what it made, the folder or, if the folder was there before, its files, unless the folder holds
    one of `resumable`, work that --resume continues (last.pt). A resumed run's folder is kept."""
    out_dir = Path(out_dir)
    made = next((folder for folder in (*reversed(out_dir.parents), out_dir) if not folder.exists()), None)
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
        try:
            yield out_dir
        except InputError:
            if not resume and not any((out_dir / name).exists() for name in resumable):
                remove_run(out_dir, made)
            raise
    finally:
        os.close(handle)


def remove_run(out_dir, made):
    """Remove what a new run made: `out_dir` and the empty folders above it up to `made`, the topmost
    folder it created, or, if `out_dir` was there before (`made` None), the files it wrote there. A
    folder above that holds anything, another run's folder say, stays."""
    if made is None:
        for path in out_dir.iterdir():
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
        return
    shutil.rmtree(out_dir)
    for folder in out_dir.parents[:len(out_dir.parents) - len(made.parents)]:
        with contextlib.suppress(OSError):  # not empty: it holds something else now
            folder.rmdir()


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
    except OSError as err:
        raise InputError(f"output directory {out_dir}: not writable ({err.strerror})") from None
    check_writable(out_dir)
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
