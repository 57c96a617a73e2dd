"""One writer per run folder, and no silent reuse of a folder that holds another run.

A training (new or resumed) holds an exclusive OS lock (``flock``) on ``RUN_DIR/.lock`` for as long as
it runs. The operating system drops the lock when the holder exits, however it exits (SIGKILL
included), so a crashed run never leaves a stale lock behind; the file itself stays, holding the pid
of the last holder for the message a second writer gets.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

from ..data.errors import DataError
from .checkpoint import CHECKPOINT_DIR, list_checkpoints

__all__ = ["RunFolderError", "RunFolderLock", "RUN_FILES", "check_new_run_folder"]

log = logging.getLogger(__name__)

LOCK_NAME = ".lock"
# What a training writes at the top of its run folder (checkpoints/ apart).
RUN_FILES = ("config.yaml", "metrics.jsonl", "summary.json", "best.pt", "tensorboard")


class RunFolderError(DataError):
    """The run folder is in use by another training, or holds another run."""


class RunFolderLock:
    """Exclusive lock on ``run_dir/.lock``; :meth:`acquire` raises RunFolderError when another process holds it.

    Use as a context manager, or call :meth:`release` (closing the file descriptor drops the lock).
    """

    def __init__(self, run_dir: str | os.PathLike):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> "RunFolderLock":
        try:
            import fcntl
        except ImportError:  # not a POSIX system: no advisory locks; say so rather than pretend
            log.warning("%s: file locks are not available on this system; make sure no other training writes here", self.run_dir)
            return self
        self.run_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.read(fd, 64).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            raise RunFolderError(
                f"run folder {self.run_dir} is in use by another training (pid {holder}); wait for it to end, or use another --out"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode("ascii"))
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # drops the flock
            self._fd = None

    def __enter__(self) -> "RunFolderLock":
        return self.acquire()

    def __exit__(self, *exc_info) -> None:
        self.release()


def check_new_run_folder(run_dir: str | os.PathLike, overwrite: bool = False) -> None:
    """Before a new (not resumed) training writes into ``run_dir``: refuse a folder that holds another
    run's checkpoints or files, unless ``overwrite`` (then those files are deleted; other files stay).

    Call it while holding the folder's lock, so that no other training writes in between.
    """
    run_dir = Path(run_dir)
    checkpoints = run_dir / CHECKPOINT_DIR
    found = [name for name in RUN_FILES if (run_dir / name).exists()]
    has_checkpoints = checkpoints.is_dir() and any(checkpoints.iterdir())
    if not found and not has_checkpoints:
        return
    if not overwrite:
        if has_checkpoints:
            newest = list_checkpoints(run_dir)
            what = f"checkpoints (newest {newest[0].name})" if newest else "a checkpoints folder"
            raise RunFolderError(f"{run_dir} already holds {what}: use --resume {run_dir}, another --out, or --overwrite to replace that run")
        raise RunFolderError(
            f"{run_dir} holds another run's files ({', '.join(found)}) but no checkpoint: use another --out, or --overwrite to replace them"
        )
    for name in found:
        path = run_dir / name
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()
    if checkpoints.is_dir():
        shutil.rmtree(checkpoints)
    log.warning("--overwrite: removed the previous run's %s from %s", ", ".join(found + ([CHECKPOINT_DIR] if has_checkpoints else [])), run_dir)
