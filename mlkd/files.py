"""Writing files so that a crash never leaves a half-written one, with the modes of ordinary files.

Every file mlkd writes into a run folder goes through `atomic_write`: the bytes go to a temporary
file ``.<name>.<8 characters>.tmp`` beside the target, which is then renamed over it. A process killed
at any instant leaves either the old file or the new one, never a mix; what it can leave is an orphan
temporary file, which `remove_orphan_temps` deletes on the next start (only names of that pattern).
Temporary files are created with mode ``0o666`` minus the umask, like any file Python opens for
writing, so checkpoints and ONNX graphs get the same permissions as logs and configs.
"""
from __future__ import annotations

import errno
import os
import re
import secrets
from pathlib import Path
from typing import BinaryIO, Callable

# The temporary names `create_temp` makes: "." + target name + "." + 8 characters + ".tmp". The 8
# characters are [a-z0-9_] so that orphans of older mlkd versions (tempfile.mkstemp) match too.
_TEMP_RE = re.compile(r"^\.(?P<name>.+)\.[a-z0-9_]{8}\.tmp$")


def create_temp(path: str | Path) -> tuple[int, Path]:
    """Create an empty temporary file beside ``path`` that follows the umask.

    Returns:
        An open file descriptor (write only) and the temporary file's path.
    """
    path = Path(path)
    while True:
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), tmp
        except FileExistsError:  # a name collision of 32 random bits: draw again
            continue


def atomic_write(path: str | Path, write: Callable[[BinaryIO], None]) -> Path:
    """Write ``path`` through ``write(file)`` on a temporary file, then rename it over ``path``.

    Raises:
        OSError: the write failed (disk full, read-only folder, ...); the message names ``path``.
            The previous ``path``, if any, is unchanged and no temporary file is left.
    """
    path = Path(path)
    try:
        fd, tmp = create_temp(path)
    except OSError as err:
        raise _clear_os_error(err, path) from None
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        replace(tmp, path)
    except BaseException as err:
        tmp.unlink(missing_ok=True)
        if isinstance(err, OSError) or _looks_like_write_failure(err):
            raise _clear_os_error(err, path) from None
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    """`atomic_write` of a UTF-8 text."""
    return atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def replace(tmp: Path, path: Path) -> None:
    """Rename ``tmp`` over ``path``: the single instant at which a new file becomes visible.

    A function of its own so that tests can simulate a crash before any rename.
    """
    os.replace(tmp, path)


def make_folder(folder: str | Path) -> Path:
    """Create ``folder`` with its parents; a file in the way or a read-only parent is named in the error."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        blocker = next((p for p in (folder, *folder.parents) if p.exists() and not p.is_dir()), folder)
        raise NotADirectoryError(errno.ENOTDIR, f"cannot create the folder {folder}: {blocker} is a file, not a "
                                 "folder; choose another output path") from None
    except OSError as err:
        raise OSError(err.errno, f"cannot create the folder {folder} ({err.strerror}); choose a writable "
                      "output path") from None
    return folder


def orphan_temps(folder: str | Path, names: set[str] | frozenset[str]) -> list[Path]:
    """Temporary files of `atomic_write` for the targets ``names`` left in ``folder`` by a killed process."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = []
    for entry in folder.iterdir():
        match = _TEMP_RE.match(entry.name)
        if match and match.group("name") in names and entry.is_file():
            found.append(entry)
    return sorted(found)


def remove_orphan_temps(folder: str | Path, names: set[str] | frozenset[str]) -> list[Path]:
    """Delete `orphan_temps` (call only while holding the folder's lock); returns what was removed."""
    removed = orphan_temps(folder, names)
    for path in removed:
        path.unlink(missing_ok=True)
    return removed


def _looks_like_write_failure(err: BaseException) -> bool:
    """torch's zip writer reports a failed write (e.g. a full disk) as a RuntimeError."""
    text = str(err)
    return isinstance(err, RuntimeError) and ("unexpected pos" in text or "file write failed" in text
                                              or "PytorchStreamWriter" in text)


def _clear_os_error(err: BaseException, path: Path) -> OSError:
    code = getattr(err, "errno", None)
    if code == errno.ENOSPC or _looks_like_write_failure(err):
        hint = f"the disk is full? free space on the file system of {path.parent} or choose another --output"
        code = code or errno.ENOSPC
    elif code in (errno.EACCES, errno.EPERM, errno.EROFS):
        hint = f"{path.parent} is not writable; choose another --output"
    else:
        hint = "check the folder and the free space"
    return OSError(code, f"could not write {path} ({getattr(err, 'strerror', None) or err}); {hint}")
