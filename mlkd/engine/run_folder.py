"""The output folder of a run: mlkd's own files in it, an exclusive lock, and clean-up of its own leftovers.

Promises (docs/guarantees.md):
- One process at a time writes into a folder: `RunFolder.open` takes an exclusive `flock` on
  ``.mlkd.lock``; the kernel releases it when the process ends, however it ends, so the lock of a
  killed run never blocks its ``--resume``.
- mlkd never deletes what it did not write: a new run starts only in a missing or empty folder, or in
  one where an earlier mlkd run stopped before its first epoch (its lock file is there) and that holds
  nothing but mlkd's own files. The only files it removes are its own orphan temporary files in such
  folders and, after a run that failed before its first epoch, the files that this run created.
"""
from __future__ import annotations

import errno
import fcntl
import logging
import os
import stat
from pathlib import Path

from mlkd.files import orphan_temps, remove_orphan_temps, temp_target

log = logging.getLogger("mlkd")

LOCK_NAME = ".mlkd.lock"
# Files a run writes into its folder (the targets of atomic writes, whose orphan temporaries are ours).
RUN_FILES = frozenset({"config.yaml", "last.pt", "best.pt", "log.jsonl", "log.csv", "metrics.json",
                       "test_scores.npz", "learning_curve.png"})
RUN_DIRS = frozenset({"tensorboard"})
# Temporary names of mlkd 0.1 (fixed suffix, not from `atomic_write`).
_LEGACY_TEMPS = frozenset({"config.yaml.tmp", "metrics.json.tmp"})


class OutputInUseError(OSError):
    """Another process holds the output folder's lock."""


def output_folder(path: str | Path) -> Path:
    """``path`` as a `Path`, refusing an empty one (``Path("")`` would be the current folder).

    Raises:
        ValueError: ``path`` is empty or blank.
    """
    if not str(path).strip():
        raise ValueError(f"the output folder is empty ({str(path)!r}); name a folder, e.g. --output runs/my_run "
                         "(--output . writes into the current folder)")
    return Path(path)


def foreign_entries(folder: Path, allowed: frozenset[str] = RUN_FILES | RUN_DIRS) -> list[str]:
    """Names in ``folder`` that mlkd did not write (its lock and temporaries count as its own)."""
    if not folder.is_dir():
        return []
    own = allowed | {LOCK_NAME} | _LEGACY_TEMPS
    temps = {p.name for p in orphan_temps(folder, RUN_FILES | allowed)}
    return sorted(p.name for p in folder.iterdir() if p.name not in own and p.name not in temps)


class RunFolder:
    """An output folder held for writing: created if needed, locked, its orphan temporaries removed.

    Args:
        path: the folder.
        own_names: names mlkd writes directly into it (files and folders), for `foreign_entries`.
    """

    def __init__(self, path: str | Path, own_names: frozenset[str] = RUN_FILES | RUN_DIRS):
        self.path = output_folder(path)
        self.own_names = own_names
        self.created: list[Path] = []  # folders this process created, deepest last
        self.used_before = False  # an mlkd process opened it before (its lock file exists)
        self._found: set[str] = set()  # entries at `open`: never removed by `discard_if_unused`
        self._fd: int | None = None

    def open(self) -> RunFolder:
        """Create the folder (and missing parents), take its lock and remove orphan temporary files.

        Raises:
            OutputInUseError: another process writes into the folder.
            FileExistsError: one of mlkd's own names in the folder is a symbolic link, or its lock is not
                a plain file; the message names it.
            OSError: the folder cannot be created or written (a file in the way, read-only), named.
        """
        self._make_dirs()
        lock = self.path / LOCK_NAME
        self._refuse_links()
        self.used_before = lock.exists()  # a plain file here: `_refuse_links` refused anything else
        self._found = {p.name for p in self.path.iterdir()}
        try:
            # O_NOFOLLOW: a link planted between the check above and this open is refused, not followed.
            fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o666)
        except OSError as err:
            if err.errno == errno.ELOOP:
                raise _link_error(lock) from None
            raise _folder_error(self.path, err) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 64).decode(errors="replace").strip()
            os.close(fd)
            raise OutputInUseError(
                f"another mlkd process{f' (pid {holder})' if holder.isdigit() else ''} is writing into {self.path}; "
                "wait for it to finish, or choose another --output") from None
        # Who holds it, for the message of a refused second run; the lock itself is the flock.
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self._fd = fd
        removed = []
        if self.used_before or (self.path / "last.pt").exists():  # a folder of mlkd's: its leftovers are ours
            removed = remove_orphan_temps(self.path, RUN_FILES | self.own_names)
            for name in _LEGACY_TEMPS:
                (self.path / name).unlink(missing_ok=True)
        if removed:
            log.info("removed %d unfinished temporary file(s) of a stopped run in %s",
                     len(removed), self.path)
        return self

    def release(self) -> None:
        """Release the lock (the lock file stays: deleting it could race with another process)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def discard_if_unused(self) -> None:
        """After a run that failed before its first epoch: remove what this run created.

        That is mlkd-named entries that were not there when it opened the folder, then the folders it
        created, each only when empty: a file someone else put there meanwhile stays, with its folder.
        """
        if (self.path / "last.pt").exists():
            return
        for name in (self.own_names | {LOCK_NAME}) - self._found:
            entry = self.path / name
            if entry.is_dir() and name in RUN_DIRS:
                for event in entry.glob("events.out.tfevents.*"):
                    event.unlink(missing_ok=True)
                _rmdir(entry)
            elif entry.is_file():
                entry.unlink(missing_ok=True)
        for folder in reversed(self.created):
            if not _rmdir(folder):
                break

    def entries(self) -> list[str]:
        """Names in the folder other than its lock."""
        return sorted(p.name for p in self.path.iterdir() if p.name != LOCK_NAME)

    def _refuse_links(self) -> None:
        """Refuse the folder when one of mlkd's own names in it is a link, or its lock not a plain file."""
        own = self.own_names | RUN_FILES | {LOCK_NAME} | _LEGACY_TEMPS
        for entry in self.path.iterdir():
            if entry.is_symlink() and (entry.name in own or temp_target(entry.name) in own):
                raise _link_error(entry)
        lock = self.path / LOCK_NAME
        if lock.exists() and not stat.S_ISREG(lock.lstat().st_mode):
            raise FileExistsError(f"{lock} is not a plain file; mlkd keeps its lock there: remove it "
                                  "(it is not mlkd's), or choose another --output")

    def _make_dirs(self) -> None:
        missing = []
        p = self.path
        while not p.exists() and p != p.parent:
            missing.append(p)
            p = p.parent
        if p.exists() and not p.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, f"cannot create the output folder {self.path}: {p} is a file, "
                                     "not a folder; choose another --output")
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise _folder_error(self.path, err) from None
        self.created = list(reversed(missing))

    def __enter__(self) -> RunFolder:
        return self.open()

    def __exit__(self, *exc) -> None:
        self.release()


def _rmdir(folder: Path) -> bool:
    try:
        folder.rmdir()
    except OSError:
        return False
    return True


def _link_error(entry: Path) -> FileExistsError:
    try:
        target = f" (to {os.readlink(entry)})"
    except OSError:  # removed meanwhile
        target = ""
    return FileExistsError(f"{entry} is a symbolic link{target}; mlkd writes its own {entry.name} there and never "
                           f"follows a link out of the output folder: remove the link (rm {entry}), or choose "
                           "another --output")


def _folder_error(path: Path, err: OSError) -> OSError:
    if err.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return PermissionError(err.errno, f"cannot write into the output folder {path} ({err.strerror}); "
                               "choose a writable --output")
    if err.errno in (errno.ENOTDIR, errno.EEXIST):
        return NotADirectoryError(errno.ENOTDIR, f"cannot create the output folder {path}: a file is in the way "
                                  f"({err.filename}); choose another --output")
    return OSError(err.errno, f"cannot create the output folder {path} ({err.strerror}); choose another --output")
