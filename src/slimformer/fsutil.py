"""Safe output folders and shared caches: checked early, written staged, replaced only when complete.

* :func:`check_output_dir` says before any work whether a folder may be written (not a file, not
  the input, writable, empty or ``overwrite``) and refuses to ever replace the root, the home
  folder, the working folder or one of its ancestors, or an input model's folder.
* :func:`staged_output_dir` hands out a temporary sibling folder; only when the block finishes
  is it renamed into place, and an existing folder (``overwrite``) is swapped out only then. An
  interrupt or a crash leaves the old folder (or none) plus a ``.<name>.partial-*`` leftover.
* :func:`atomic_write_text` writes a file through a per-process temporary name.
* :func:`file_lock` serialises processes sharing a cache entry (``fcntl.flock`` where present).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import glob
import logging
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

logger = logging.getLogger(__name__)

PARTIAL_MARK = ".partial-"
_OLD_MARK = ".replaced-"


class OutputNotWritableError(PermissionError, ValueError):
    """An output folder that cannot be written; a ``ValueError`` too, so a CLI reports it in one line."""


def protected_folders() -> list[Path]:
    """Folders that are never deleted or replaced: the root, the home folder and the cwd's ancestors."""
    cwd = Path.cwd().resolve()
    return [Path(cwd.anchor), Path.home().resolve(), cwd, *cwd.parents]


def model_sources(model) -> list[str]:
    """The local folder ``model`` was loaded from (``config._name_or_path``), if it still exists."""
    source = getattr(getattr(model, "config", None), "_name_or_path", None)
    return [source] if isinstance(source, str) and source and Path(source).expanduser().is_dir() else []


def check_removable(folder: str | Path, *, inputs: Iterable[str | Path] = ()) -> Path:
    """Raise ``ValueError`` if replacing ``folder`` would delete something the user still needs.

    Refused: the root, the home folder, the working folder or any folder holding it, and any
    folder that is (or holds) one of ``inputs`` (e.g. the model being compressed).

    Returns:
        The resolved folder.
    """
    target = Path(folder).expanduser().resolve()
    if target in protected_folders():
        raise ValueError(
            f"refusing to replace {str(folder)!r}: it is the root, the home folder, the working folder or "
            "holds the working folder; give a new folder for the output"
        )
    for item in inputs:
        source = Path(item).expanduser()
        if not source.exists():
            continue
        source = source.resolve()
        if source == target or source.is_relative_to(target):
            raise ValueError(
                f"refusing to replace {str(folder)!r}: it holds the input {str(item)!r}; write the output elsewhere"
            )
    return target


def check_output_dir(folder: str | Path, *, overwrite: bool = False, inputs: Iterable[str | Path] = ()) -> Path:
    """Check, before any work, that ``folder`` can receive a command's output.

    Args:
        folder: the output folder (missing, empty, or replaced under ``overwrite``).
        overwrite: allow replacing a non-empty folder (done only once the new one is complete).
        inputs: files or folders the command reads; the output may not be or hold any of them.

    Returns:
        The folder as a :class:`Path`.

    Raises:
        NotADirectoryError: the path (or a parent) is a file.
        FileExistsError: the folder is not empty and ``overwrite`` is False.
        ValueError: the folder is protected or holds an input (see :func:`check_removable`).
        OutputNotWritableError: the folder's parent cannot be written (a ``PermissionError`` and a
            ``ValueError``).
    """
    path = Path(folder).expanduser()
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(f"output path {str(folder)!r} is a file, not a folder")
    if path.is_dir():
        check_removable(path, inputs=inputs)  # even an empty folder is moved aside when replaced
        if not overwrite and any(path.iterdir()):
            raise FileExistsError(
                f"output folder {str(folder)!r} is not empty; choose another or pass --overwrite to replace it"
            )
    parent = _existing_parent(path)
    if not parent.is_dir():
        raise NotADirectoryError(f"output folder {str(folder)!r}: {str(parent)!r} is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputNotWritableError(
            f"output folder {str(folder)!r}: cannot write in {str(parent)!r} (permission denied)"
        )
    return path


def _existing_parent(path: Path) -> Path:
    """The nearest existing folder at or above ``path.parent`` (where the staged folder is created)."""
    parent = path.absolute().parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    return parent


@contextlib.contextmanager
def staged_output_dir(
    folder: str | Path, *, overwrite: bool = False, inputs: Iterable[str | Path] = ()
) -> Iterator[Path]:
    """Yield a temporary sibling of ``folder`` to write into; move it into place when the block ends.

    An existing ``folder`` (allowed only with ``overwrite``) is swapped with the new one in one
    atomic ``renameat2(RENAME_EXCHANGE)`` on Linux (elsewhere: renamed aside, the new one renamed
    in), and only then deleted: ``folder`` is always the old complete output or the new complete
    one (with the fallback, absent for an instant between two renames). If the block raises, the
    staged folder is deleted and ``folder`` is untouched.

    Raises:
        see :func:`check_output_dir`.
    """
    inputs = list(inputs)  # read twice: before the work and again at the swap
    path = Path(os.path.abspath(check_output_dir(folder, overwrite=overwrite, inputs=inputs)))
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_dead_partials(path)
    stage = Path(tempfile.mkdtemp(prefix=f".{path.name}{PARTIAL_MARK}{os.getpid()}-", dir=path.parent))
    stage.chmod(0o777 & ~_umask())  # mkdtemp makes it private; the output gets the usual mode
    try:
        yield stage
        pause_point("stage:complete")
        _fsync_tree(stage)
        _swap_in(stage, path, overwrite=overwrite, inputs=inputs)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise


def _remove_dead_partials(path: Path) -> None:
    """Delete staged folders for ``path`` left by processes that died (killed mid-save)."""
    for leftover in path.parent.glob(f".{glob.escape(path.name)}{PARTIAL_MARK}*"):
        pid = leftover.name[len(path.name) + 1 + len(PARTIAL_MARK) :].split("-", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            logger.info("removing %s, left by an interrupted save", leftover)
            shutil.rmtree(leftover, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _swap_in(stage: Path, path: Path, *, overwrite: bool, inputs: Iterable[str | Path]) -> None:
    pause_point("swap:before")
    if not path.exists():
        os.replace(stage, path)
        return
    check_removable(path, inputs=inputs)
    if not overwrite and any(path.iterdir()):  # it may have been filled while we worked
        raise FileExistsError(f"output folder {str(path)!r} was filled by someone else meanwhile")
    if _exchange(stage, path):  # one atomic step: ``path`` is the old folder, then the new one
        pause_point("swap:done")
        shutil.rmtree(stage, ignore_errors=True)  # now holds the old contents
        return
    old = Path(tempfile.mkdtemp(prefix=f".{path.name}{_OLD_MARK}", dir=path.parent))
    os.replace(path, old / "old")  # a rename: the old output stays whole (here) until the new one is in
    pause_point("swap:between")
    try:
        os.replace(stage, path)
    except OSError:
        os.replace(old / "old", path)
        raise
    pause_point("swap:done")
    shutil.rmtree(old, ignore_errors=True)


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two folders (Linux ``renameat2(RENAME_EXCHANGE)``); False where unsupported."""
    if os.environ.get("SLIMFORMER_NO_EXCHANGE") or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):  # old kernel or a file system without it
        return False
    raise OSError(err, os.strerror(err), str(b))


def pause_point(name: str) -> None:
    """Test hook: with ``SLIMFORMER_TEST_PAUSE=name`` the process stops here, so a test can kill it.

    It writes ``$SLIMFORMER_TEST_PAUSE_FILE`` (if set) and sleeps ``$SLIMFORMER_TEST_PAUSE_S`` s.
    """
    if os.environ.get("SLIMFORMER_TEST_PAUSE") != name:
        return
    signal_file = os.environ.get("SLIMFORMER_TEST_PAUSE_FILE")
    if signal_file:
        Path(signal_file).write_text(name + "\n")
    time.sleep(float(os.environ.get("SLIMFORMER_TEST_PAUSE_S", "30")))


def _fsync_tree(folder: Path) -> None:
    """Flush every file to disk, so a power cut after the rename cannot leave empty files."""
    for file in folder.rglob("*"):
        if file.is_file():
            fd = os.open(file, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` through a per-process temporary file and an atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


@contextlib.contextmanager
def file_lock(path: str | Path, *, timeout: float | None = None, poll: float = 0.2) -> Iterator[Path]:
    """Hold an exclusive lock on ``path`` (created if missing) for the block.

    Other processes calling this with the same path wait until the block ends (or raise
    ``TimeoutError`` after ``timeout`` seconds). The lock is released if the holder dies.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # no flock (Windows): a lock is a courtesy, the writes are atomic anyway
        yield path
        return
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    start = time.monotonic()
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as e:
                if e.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
                if timeout is not None and time.monotonic() - start > timeout:
                    raise TimeoutError(f"could not lock {str(path)!r} within {timeout} s") from None
                time.sleep(poll)
        yield path
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def remove_dir_contents(folder: str | Path, *, inputs: Iterable[str | Path] = ()) -> None:
    """Delete everything inside ``folder`` after :func:`check_removable` allows it."""
    target = check_removable(folder, inputs=inputs)
    for child in target.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()
