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
        OSError: the write failed (disk full, quota or file-size limit reached, read-only folder, ...);
            the message names ``path``, never the temporary file. The previous ``path``, if any, is
            unchanged and no temporary file is left.
    """
    def fill(fd: int, tmp: Path) -> None:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())

    return _write_via_temp(Path(path), fill)


def atomic_write_named(path: str | Path, write_to: Callable[[Path], None]) -> Path:
    """`atomic_write` for writers that take a file name rather than a file (the ONNX exporter).

    ``write_to(tmp)`` writes the temporary file ``tmp`` (created empty beside ``path`` with the umask's
    mode; the writer may truncate and rewrite it), which is then synced and renamed over ``path``.

    Raises:
        OSError: as in `atomic_write`, naming ``path``. Other errors of ``write_to`` propagate unchanged;
            in every case the previous ``path`` is unchanged and no temporary file is left.
    """
    def fill(fd: int, tmp: Path) -> None:
        os.close(fd)
        write_to(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())

    return _write_via_temp(Path(path), fill)


def _write_via_temp(path: Path, fill: Callable[[int, Path], None]) -> Path:
    """Create a temporary file beside ``path``, let ``fill(fd, tmp)`` write it, rename it over ``path``."""
    try:
        fd, tmp = create_temp(path)
    except OSError as err:
        raise _clear_os_error(err, path) from None
    try:
        fill(fd, tmp)
        replace(tmp, path)
    except BaseException as err:
        written = _size(tmp)
        tmp.unlink(missing_ok=True)
        if isinstance(err, OSError) or _looks_like_write_failure(err):
            raise _clear_os_error(err, path, written) from None
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


def is_same_file(a: str | Path, b: str | Path) -> bool:
    """Whether ``a`` and ``b`` name one file: the same path once resolved (``..``, symlinks), or, when
    both exist, the same file on disk (a hard link)."""
    if Path(a).resolve() == Path(b).resolve():
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist (yet)
        return False


def check_output_is_not_input(output: str | Path, source: str | Path, note: str = "") -> None:
    """Refuse an output path that would replace the file a command reads (``eval``, ``export``).

    Args:
        output: the file about to be written.
        source: the file being read.
        note: how ``output`` was chosen, for the message (e.g. "the default: the checkpoint path with .onnx").

    Raises:
        ValueError: ``output`` is ``source`` (the same path, a symlink to it or a hard link of it).
    """
    if is_same_file(output, source):
        how = "" if Path(output) == Path(source) else " (the same file under another name or through a link)"
        chosen = f" ({note})" if note else ""
        raise ValueError(f"the output {output}{chosen} is the input {source} itself{how}; writing it would replace "
                         "the input: pass another --output")


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


def temp_target(name: str) -> str | None:
    """The target's name if ``name`` is a temporary file name of `create_temp`, else None."""
    match = _TEMP_RE.match(name)
    return match.group("name") if match else None


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


def _size(path: Path) -> int | None:
    try:
        return path.stat().st_size
    except OSError:
        return None


def _clear_os_error(err: BaseException, path: Path, written: int | None = None) -> OSError:
    """An OSError that names ``path`` (not a temporary file) and the likely cause with its remedy.

    ``written`` is the size the temporary file had reached when the write failed; it tells a file-size
    limit from a full disk when the writer (torch's zip writer) reports no error code.
    """
    code = getattr(err, "errno", None)
    if code is None and _looks_like_write_failure(err):
        code = _guess_write_failure(path, written)
    where = f"the file system of {path.parent}"
    if code == errno.ENOSPC:
        hint = f"the disk is full: free space on {where} or choose another --output"
    elif code == errno.EDQUOT:
        hint = f"your disk quota on {where} is used up: free space or choose another --output"
    elif code == errno.EFBIG:
        limit = _file_size_limit()
        shown = f" ({limit} bytes, `ulimit -f`)" if limit is not None else ""
        hint = (f"the file reached the largest size allowed{shown}: raise the limit with `ulimit -f`, or "
                f"choose an --output on a file system that takes larger files")
    elif code in (errno.EACCES, errno.EPERM, errno.EROFS):
        hint = f"{path.parent} is not writable; choose another --output"
    elif _looks_like_write_failure(err):
        hint = (f"the disk is full, your quota is used up, or a file-size limit (`ulimit -f`) was reached? "
                f"check {where} or choose another --output")
    else:
        hint = "check the folder and the free space"
    # torch's zip writer says "unexpected pos 8896 vs 8792"; the cause it stands for reads better.
    reason = getattr(err, "strerror", None) or (os.strerror(code) if code is not None else err)
    message = f"could not write {path} ({reason}); {hint}"
    return OSError(code, message) if code is not None else OSError(message)


def _file_size_limit() -> int | None:
    """This process's file-size limit (RLIMIT_FSIZE) in bytes, or None when there is none."""
    try:
        import resource
    except ImportError:  # not on Windows
        return None
    soft, _ = resource.getrlimit(resource.RLIMIT_FSIZE)
    return None if soft == resource.RLIM_INFINITY else int(soft)


def _guess_write_failure(path: Path, written: int | None) -> int | None:
    """The errno a writer without error codes most likely hit: EFBIG, ENOSPC, or None (unknown).

    A file that stopped at the process's file-size limit hit that limit; a file system with (almost) no
    space left for this user is full.
    """
    limit = _file_size_limit()
    if limit is not None and written is not None and written >= limit:
        return errno.EFBIG
    try:
        stats = os.statvfs(path.parent)
    except (OSError, AttributeError):
        return None
    if stats.f_bavail * stats.f_frsize < 1 << 20:
        return errno.ENOSPC
    return None
