"""Files lenslib writes: where its cache lives, and writes that never leave half a file.

>>> import tempfile, pathlib
>>> target = pathlib.Path(tempfile.mkdtemp()) / "out.txt"
>>> write_text_atomic(target, "hello")
>>> target.read_text()
'hello'
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable


def cache_root() -> Path:
    """The cache directory: ``$LENSLIB_CACHE`` if set, else the user cache dir (XDG on Linux)."""
    env = os.environ.get("LENSLIB_CACHE")
    if env:
        return Path(env).expanduser()
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("lenslib"))


def write_atomic(target: Path, write: Callable[[str], None]) -> None:
    """Call ``write(temporary_path)``, then rename the file onto ``target``.

    A reader sees the old file or the new one, never a half-written one; on any error the
    temporary file is removed. The file gets an ordinary file's mode (``0o666`` less the umask).
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    os.close(handle)
    try:
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes it private
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text_atomic(target: Path, text: str) -> None:
    """:func:`write_atomic` for UTF-8 text."""
    write_atomic(target, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
