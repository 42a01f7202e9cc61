"""Output files that are written whole or not at all, never over an input, a device or a FIFO.

    check_output_path(out, inputs=[...])   # before any work: refuse a path that cannot be an output
    with atomic_output(out) as tmp:         # write `tmp`; it becomes `out` when the block ends well
        write(tmp)

The file is written under a temporary name in `out`'s folder, flushed to disk and renamed over
`out`, so a reader sees the old file or the new one, never half of one. An error or a Ctrl-C in
the block removes the temporary file and leaves `out` as it was.

An existing `out` must be a regular file. A symlink is refused too, even one to a regular file:
renaming over it would replace the link rather than write where it points, and writing where it
points could not be made atomic without guessing which of the two the user meant.
"""
import contextlib
import errno
import os
import secrets
import shutil
import stat
from pathlib import Path

from .errors import BadInput, OutputFileError


def _kind(mode: int) -> str:
    return ("a folder" if stat.S_ISDIR(mode) else "a FIFO" if stat.S_ISFIFO(mode)
            else "a symlink" if stat.S_ISLNK(mode) else "a socket" if stat.S_ISSOCK(mode)
            else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "not a regular file")


def _refuse_special(out: Path):
    try:
        mode = os.lstat(out).st_mode
    except (FileNotFoundError, NotADirectoryError):  # missing (a folder on the way may be a file: said later)
        return
    except OSError as exc:
        raise OutputFileError(f"cannot write {out}: {exc.strerror or exc}") from None
    if not stat.S_ISREG(mode):
        raise OutputFileError(f"{out} is {_kind(mode)}, not a regular file; choose another output file")


def check_output_path(path, inputs=()) -> Path:
    """`path` as a Path, once it is known to be a usable output: missing or a regular file (not a
    symlink), not one of `inputs` under any name (a hard link included), in a folder that exists or
    can be made. Raises OutputFileError otherwise."""
    if not str(path):
        raise OutputFileError("the output file's name is empty")
    out = Path(path)
    _refuse_special(out)
    for source in inputs:
        with contextlib.suppress(OSError):  # either is missing: they cannot be the same file
            if os.path.samefile(source, out):
                raise OutputFileError(f"the output {out} is the input file {source}; choose another output file")
    folder = out.parent
    while not folder.exists() and folder != folder.parent:  # the nearest folder that exists
        folder = folder.parent
    if not folder.is_dir():
        raise OutputFileError(f"cannot write {out}: {folder} is not a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OutputFileError(f"cannot write {out}: {folder} is not writable")
    return out


def _new_file(out: Path) -> Path:
    """An empty file beside `out` under a fresh name, with the mode the umask gives any new file
    (mkstemp would make it 0600, and the rename would keep that)."""
    while True:
        tmp = out.parent / f".{out.name[:40]}.{secrets.token_hex(6)}.part"  # within 255 bytes, even in UTF-8
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            return tmp
        except FileExistsError:
            continue


def _fsync(path, flags=os.O_RDONLY):
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_output(path):
    """Yield a temporary path in `path`'s folder (made if missing); when the block ends without an
    exception, the file there is synced and renamed to `path`. On any exception, KeyboardInterrupt
    included, the temporary file is removed and `path` is untouched. An OSError (a full disk, a
    folder that cannot be made) becomes OutputFileError naming `path`."""
    out = Path(path)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = _new_file(out)
    except OSError as exc:
        raise OutputFileError(f"cannot write {out}: {exc.strerror or exc}") from None
    try:
        yield tmp
        _fsync(tmp)
        _refuse_special(out)  # again: something may have appeared there while the block ran
        os.replace(tmp, out)
    except OSError as exc:
        _remove(tmp)
        raise OutputFileError(f"cannot write {out}: {_why(exc, out.parent)}") from None
    except BaseException:
        _remove(tmp)
        raise
    with contextlib.suppress(OSError, AttributeError):  # the rename made durable, where folders open
        _fsync(out.parent, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))


def _why(exc: OSError, folder: Path) -> str:
    """An OSError in words; a full disk said plainly (numpy's writers report it as "N requested and
    0 written", with no errno)."""
    with contextlib.suppress(OSError):
        if exc.errno == errno.ENOSPC or shutil.disk_usage(folder).free == 0:
            return "no space left on the device"
    return exc.strerror or str(exc)


def _remove(tmp: Path):
    with contextlib.suppress(OSError):
        tmp.unlink()


def atomic_write_text(path, text: str):
    """Write UTF-8 text to `path` through `atomic_output`: whole or not at all."""
    with atomic_output(path) as tmp:
        tmp.write_bytes(text.encode("utf-8"))


def check_output_dir(path) -> Path:
    """An output folder, made if missing and proved writable (a file made and removed in it), before
    any work whose results would go there. Raises OutputFileError saying why not."""
    path = Path(path)
    if os.path.lexists(path) and not path.is_dir():
        mode = os.lstat(path).st_mode
        kind = "a file" if stat.S_ISREG(mode) else _kind(mode)
        raise OutputFileError(f"the output folder {path} exists and is {kind}, not a folder; choose another -o")
    try:
        path.mkdir(parents=True, exist_ok=True)
        _remove(_new_file(path / "write-test"))
    except OSError as exc:
        raise OutputFileError(f"cannot write to the output folder {path}: {exc.strerror or exc}") from None
    return path


# --- inputs -------------------------------------------------------------------------------------
MB = 1 << 20


class NotRegularFile(OSError):
    """`open_regular` found a FIFO, a device, a folder or a socket; `kind` says which."""

    def __init__(self, mode: int):
        self.kind = _kind(mode)
        super().__init__(errno.EINVAL, f"{self.kind}, not a regular file")


@contextlib.contextmanager
def open_regular(path):
    """`path` opened for reading in binary, when it is a regular file. Anything else is refused
    (NotRegularFile) before a byte is read from it, and a FIFO is opened without waiting for a
    writer. Other OSErrors (missing, no permission) come as they are."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    with os.fdopen(fd, "rb") as f:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise NotRegularFile(mode)
        yield f


def read_regular_file(path, what: str, max_bytes: int) -> bytes:
    """The bytes of a regular file of at most max_bytes; `what` names it in errors ("the prompts
    file"). A FIFO, a device or a folder is refused without reading from it (`open_regular`),
    and so is a file that is, or grows, larger than the bound. Raises BadInput."""
    too_big = BadInput(f"{what} {path} is larger than {max_bytes / MB:g} MB, more than it can sensibly hold")
    try:
        with open_regular(path) as f:
            if os.fstat(f.fileno()).st_size > max_bytes:
                raise too_big
            data = f.read(max_bytes + 1)
    except FileNotFoundError:
        raise BadInput(f"{what} {path} does not exist") from None
    except NotRegularFile as exc:
        raise BadInput(f"{what} {path} is {exc.kind}, not a regular file: give a file") from None
    except OSError as exc:
        raise BadInput(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    if len(data) > max_bytes:
        raise too_big
    return data


def read_regular_text(path, what: str, max_bytes: int) -> str:
    """read_regular_file, as UTF-8 text."""
    try:
        return read_regular_file(path, what, max_bytes).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadInput(f"{what} {path} is not UTF-8 text (byte {exc.start})") from None
