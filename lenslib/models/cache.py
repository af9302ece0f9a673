"""An on-disk cache of de-quantised models, written atomically and checked on every load.

De-quantising a GGUF file in Python is slow; loading plain safetensors is fast. The first load of a bundled model therefore saves the de-quantised Hugging Face model
and tokenizer into a cache directory; later loads read that.

Layout: ``<cache_root>/<entry>/`` holds what ``save_pretrained`` writes plus ``manifest.json``,
which records every file's size and SHA-256 and is written last. An entry is built in a
temporary sibling directory and renamed into place, so a crash, a full disk or a killed process
never leaves a directory that a later load accepts. A file lock serialises concurrent builds:
a second process that wants the same entry waits and then reads what the first one built.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Callable

from lenslib.core.files import cache_root, write_atomic

MANIFEST = "manifest.json"
CACHE_FORMAT = 3  # bump when the layout or the conversion changes (2: manifest has mtimes;
# 3: tokenizer.json merges compacted)


class DamagedCacheWarning(UserWarning):
    """A cache entry failed its check and is being rebuilt."""


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def _write_manifest(directory: Path, meta: dict) -> None:
    files = {
        p.name: {"bytes": p.stat().st_size, "mtime_ns": p.stat().st_mtime_ns, "sha256": _sha256(p)}
        for p in sorted(directory.iterdir())
        if p.is_file() and p.name != MANIFEST
    }
    manifest = {"format": CACHE_FORMAT, "meta": meta, "files": files}
    write_atomic(directory / MANIFEST, lambda tmp: _write_synced(tmp, json.dumps(manifest, indent=1)))


def _write_synced(path: str, text: str) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())


def check_entry(directory: Path, *, full: bool = False) -> str | None:
    """Why ``directory`` is not a usable cache entry, or None when it is.

    Checks that the manifest exists and that every file it lists has the recorded size and
    SHA-256 (hashing reads every byte once). A file whose size and modification time
    are still those recorded when it was hashed is not hashed again unless ``full`` is set: any
    rewrite, truncation or edit changes them. ``python -m lenslib.provision`` checks in full.
    """
    manifest_path = directory / MANIFEST
    if not directory.is_dir():
        return "missing"
    try:
        manifest = json.loads(manifest_path.read_text())
        files = manifest["files"]
    except (OSError, ValueError, KeyError) as error:
        return f"unreadable manifest ({error})"
    if manifest.get("format") != CACHE_FORMAT:
        return f"cache format {manifest.get('format')} is not {CACHE_FORMAT}"
    if not files:
        return "manifest lists no files"
    for name, expected in files.items():
        path = directory / name
        if not path.is_file():
            return f"{name} is missing"
        stat = path.stat()
        if stat.st_size != expected["bytes"]:
            return f"{name} has {stat.st_size} bytes, expected {expected['bytes']}"
        untouched = stat.st_mtime_ns == expected.get("mtime_ns")
        if (full or not untouched) and _sha256(path) != expected["sha256"]:
            return f"{name} does not match its recorded SHA-256"
    return None


def is_cached(entry: str) -> bool:
    """Whether ``entry`` has a complete directory (cheap: existence of the manifest only)."""
    return (cache_root() / entry / MANIFEST).is_file()


def ensure_entry(entry: str, build: Callable[[Path], dict], *, full_check: bool = False) -> Path:
    """Return the directory of a valid cache entry, building it first if needed.

    Args:
        entry: directory name under :func:`cache_root`, e.g. ``"gemma-3-270m-v1"``.
        build: writes the entry's files into the empty directory it is given and returns
            metadata to record in the manifest. It runs at most once at a time per entry.
        full_check: hash every file even when its size and modification time are unchanged.

    A damaged entry (missing, truncated or altered file, unreadable manifest) is reported with a
    :class:`DamagedCacheWarning`, removed and rebuilt.
    """
    from filelock import FileLock

    root = cache_root()
    root.mkdir(parents=True, exist_ok=True)
    final = root / entry
    with FileLock(str(root / f"{entry}.lock")):
        problem = check_entry(final, full=full_check)
        if problem is None:
            return final
        if problem != "missing":
            warnings.warn(
                f"lenslib cache entry {final} is damaged ({problem}); rebuilding it.",
                DamagedCacheWarning,
                stacklevel=3,
            )
            shutil.rmtree(final, ignore_errors=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{entry}.", dir=root))
        try:
            meta = build(staging)
            _write_manifest(staging, meta)
            staging.chmod(0o755)  # mkdtemp makes it private; the cache is readable like any other
            os.replace(staging, final)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    return final
