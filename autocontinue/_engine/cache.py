"""The engine's per-user cache: where it is, one lock per artefact, and atomic installs into it."""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from .commands import say


def cache_dir() -> Path:
    """Return the per-user cache folder of the local engine (it may not exist yet).

    ``$AUTOCONTINUE_CACHE`` if set, else ``$XDG_CACHE_HOME/autocontinue``, else
    ``~/.cache/autocontinue``.
    """
    explicit = os.environ.get("AUTOCONTINUE_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    if xdg:
        return Path(xdg).expanduser() / "autocontinue"
    return Path.home() / ".cache" / "autocontinue"


def is_executable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


@contextlib.contextmanager
def file_lock(lock_path: Path, what: str) -> Iterator[None]:
    """Hold an exclusive ``flock`` on *lock_path* for the duration of the block.

    Used so that two processes (say, two pytest workers) never download or build the
    same artifact at once; the second one waits and then finds the first one's result.
    """
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with lock_path.open("a") as fh:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            say(f"waiting for another process preparing {what} (lock {lock_path})")
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def install_file(source: Path, target: Path, *, executable: bool) -> None:
    """Copy *source* to *target* atomically.

    The copy goes to a temporary name in the target folder and is then renamed over
    *target*, so a reader never sees a half-written file, even if we are killed
    mid-copy.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out, source.open("rb") as src:
            shutil.copyfileobj(src, out, length=1 << 20)
            out.flush()
            os.fsync(out.fileno())
        # mkstemp creates the file 0600; give it the usual modes so a cache shared by
        # several users (or a CI cache restored under another uid) stays usable.
        tmp.chmod(0o755 if executable else 0o644)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
