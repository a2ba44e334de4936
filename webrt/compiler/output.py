"""Write a command's output folder all at once, or not at all.

Outputs are checked before any work starts (:func:`check_output_dir`, :func:`check_output_file`):
an output folder that is a file, or whose nearest existing parent is a file or not writable, is
an :class:`OutputPathError` at once, not after a long conversion.

Writing into a folder that already holds files keeps the files the command does not write (the
usual layout puts convert_weight's shards, gen_config's files and the libraries in one folder)
and replaces the ones it writes; ``replaces`` names the files a command owns (convert_weight: the
``params_shard_*.bin`` shards and the index), so a shard of an earlier, larger conversion that the
new index does not name is deleted once the new index is in place: no stale shard is left.

SIGINT and SIGTERM while the output is staged both delete the staging folder (SIGTERM exits with
status 143 after the cleanup).
"""

from __future__ import annotations

import fnmatch
import os
import shutil
import signal
import tempfile
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from webrt.errors import WebrtError


class OutputPathError(WebrtError, OSError):
    """An output path is a file where a folder is needed, or its folder cannot be written."""


def _writable_parent(path: Path, what: str) -> None:
    """The nearest existing ancestor of ``path`` must be a writable folder."""
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise OutputPathError(f"cannot create {what} {path}: {parent} is a file; choose another output path.")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputPathError(f"cannot write {what} {path}: {parent} is not writable; "
                              "choose another output path or fix its permissions.")


def check_output_dir(out_dir: str | Path) -> Path:
    """Raise OutputPathError unless ``out_dir`` can be the output folder; return it absolute."""
    out = Path(out_dir).absolute()
    if out.exists() and not out.is_dir():
        raise OutputPathError(f"the output {out} exists and is not a folder; choose another output path.")
    if out.is_dir():
        if not os.access(out, os.W_OK | os.X_OK):
            raise OutputPathError(f"the output folder {out} is not writable; choose another output path "
                                  "or fix its permissions.")
    _writable_parent(out, "the output folder")
    return out


def check_output_file(path: str | Path) -> Path:
    """Raise OutputPathError unless a file can be written at ``path`` (not a folder's place)."""
    out = Path(path).absolute()
    if out.is_dir():
        raise OutputPathError(f"the output {out} is a folder; pass a file path.")
    _writable_parent(out, "the output file")
    return out


class _Terminated(BaseException):
    """SIGTERM arrived while an output was staged."""


@contextmanager
def _sigterm_raises() -> Iterator[None]:
    """Turn SIGTERM into an exception (so ``finally`` blocks run) in the main thread."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        raise _Terminated()

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextmanager
def staged_output_dir(out_dir: str | Path, replaces: tuple[str, ...] = ()) -> Iterator[Path]:
    """Yield a staging folder beside ``out_dir``; on success its files move into ``out_dir``.

    On any exception (KeyboardInterrupt and SIGTERM included) the staging folder is deleted and
    ``out_dir`` is left exactly as it was: no half-written artifact. Files are moved one by one
    with ``os.replace`` (atomic per file), index files last, so a reader never sees an index that
    points at shards not yet in place; then files of ``out_dir`` matching a ``replaces`` pattern
    that the command did not write (stale shards) are deleted.
    """
    out = check_output_dir(out_dir)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.staging-", dir=out.parent))
    except OSError as e:
        raise OutputPathError(f"cannot write beside {out}: {e.strerror or e}; choose another output path.") from None
    try:
        with _sigterm_raises():
            try:
                yield staging
                _move_in(staging, out, replaces)
            finally:
                if staging.exists():
                    shutil.rmtree(staging, ignore_errors=True)
    except _Terminated:
        raise SystemExit(128 + signal.SIGTERM) from None


def _move_in(staging: Path, out: Path, replaces: tuple[str, ...]) -> None:
    if not out.exists():
        os.replace(staging, out)
        return
    if not out.is_dir():
        raise OutputPathError(f"{out} exists and is not a folder; choose another output path.")
    files = sorted(staging.iterdir(), key=lambda p: (p.suffix == ".json", p.name))
    written = {f.name for f in files}
    for f in files:
        target = out / f.name
        if target.is_dir() and not f.is_dir():
            shutil.rmtree(target)
        os.replace(f, target)
    for old in out.iterdir():
        if old.name not in written and old.is_file() and any(fnmatch.fnmatchcase(old.name, p) for p in replaces):
            old.unlink()
