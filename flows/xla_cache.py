"""XLA's persistent compilation cache for the command line's runs: a later run loads what an earlier one compiled.

The training step loop and the member scores run as `tf.function(jit_compile=True)`, which XLA compiles anew in
every process: for a small run (2 members x 2 epochs of digits) most of the training task's time. With
`--tf_xla_persistent_cache_directory=DIR` in `TF_XLA_FLAGS`, TensorFlow saves each compiled program to DIR (keyed by
the program's HLO and its argument signature, and loaded only if the saved HLO matches exactly; written to a
temporary file and renamed, so concurrent runs are safe) and a later process compiling the same program loads it.

TensorFlow fails the XLA call when it cannot write there (`jit_compile="auto"` then falls back to a plain graph,
with a warning), so the directory is created and checked before the flag is set, and skipped if unusable.

The folder gains a file per distinct program and shape, and TensorFlow never removes one: `enable` keeps it under
`MAX_BYTES` by deleting the files written longest ago (`prune`).
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import platform
import time
from collections.abc import Mapping, MutableMapping
from pathlib import Path

FLAG = "--tf_xla_persistent_cache_directory"
MAX_BYTES = 256 * 2**20  # ~850 compiled digits step loops (~0.3 MB each)
# Files written this recently are kept: they may be another run's, still being renamed.
RECENT_SECONDS = 3600.0


def default_directory(environ: Mapping[str, str] = os.environ) -> Path:
    """`$XDG_CACHE_HOME` (default `~/.cache`) `/fused-ensembles/xla/<TensorFlow version>-<CPU digest>`: a program
    compiled by another TensorFlow, or for another CPU (a home directory shared between machines), is never loaded.
    """
    root = Path(environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return root / "fused-ensembles" / "xla" / f"{tensorflow_version()}-{cpu_digest()}"


def tensorflow_version() -> str:
    """The installed TensorFlow's version from its `*.dist-info` folder name, without importing it (`unknown` if
    not found)."""
    spec = importlib.util.find_spec("tensorflow")
    if spec is None or not spec.origin:
        return "unknown"
    site = Path(spec.origin).parent.parent
    for name in ("tensorflow", "tensorflow_cpu", "tf_nightly"):
        for info in site.glob(f"{name}-*.dist-info"):
            return info.name.removesuffix(".dist-info").split("-", 1)[1]
    return "unknown"


def cpu_digest() -> str:
    """8 hex digits naming this CPU's model and instruction set extensions (XLA compiles for the host CPU)."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            lines = [line for line in cpuinfo if line.startswith(("model name", "flags"))][:2]
    except OSError:
        lines = []
    text = "".join(lines) or f"{platform.machine()} {platform.processor()}"
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def enable(environ: MutableMapping[str, str] = os.environ, max_bytes: int = MAX_BYTES) -> str | None:
    """Adds `--tf_xla_persistent_cache_directory=<default_directory()>` to `TF_XLA_FLAGS` unless it already names a
    cache directory (`--tf_xla_persistent_cache_directory=` with no value: no cache) or the directory cannot be
    created or written. Effective only before TensorFlow reads its flags (its first XLA compilation). The folder is
    first pruned to `max_bytes` (`prune`).

    Returns:
        The cache directory now in use (None: none).
    """
    flags = environ.get("TF_XLA_FLAGS", "")
    for flag in flags.split():
        if flag.startswith(FLAG + "="):
            return flag.split("=", 1)[1] or None
    directory = default_directory(environ)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None
    if not os.access(directory, os.W_OK | os.X_OK):
        return None
    prune(directory, max_bytes)
    environ["TF_XLA_FLAGS"] = f"{flags} {FLAG}={directory}".strip()
    return str(directory)


def prune(directory: Path, max_bytes: int = MAX_BYTES, now: float | None = None) -> list[Path]:
    """Deletes the files of `directory` written longest ago until the rest hold at most `max_bytes`; a file written
    in the last `RECENT_SECONDS` is never deleted. A deleted program that a run needs again is compiled and written
    again (its new write time keeps it). Files another process removes meanwhile are skipped.

    Returns:
        The deleted files, oldest first.
    """
    now = time.time() if now is None else now
    files = []
    try:
        with os.scandir(directory) as entries:
            for entry in entries:
                try:
                    if entry.is_file(follow_symlinks=False):
                        stat = entry.stat(follow_symlinks=False)
                        files.append((stat.st_mtime, stat.st_size, Path(entry.path)))
                except OSError:
                    continue
    except OSError:  # unreadable or gone: nothing to prune
        return []
    total, deleted = sum(size for _, size, _ in files), []
    for written, size, path in sorted(files):
        if total <= max_bytes or now - written < RECENT_SECONDS:
            break
        try:
            path.unlink()
        except OSError:
            continue
        total -= size
        deleted.append(path)
    return deleted
