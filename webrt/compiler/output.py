"""Write a command's output folder all at once, or not at all."""

from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


@contextmanager
def staged_output_dir(out_dir: str | Path) -> Iterator[Path]:
    """Yield a staging folder beside ``out_dir``; on success its files move into ``out_dir``.

    On any exception (KeyboardInterrupt included) the staging folder is deleted and ``out_dir``
    is left exactly as it was: no half-written artifact. Files are moved one by one with
    ``os.replace`` (atomic per file), index files last, so a reader never sees an index that
    points at shards not yet in place.
    """
    out = Path(out_dir).absolute()
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.staging-", dir=out.parent))
    try:
        yield staging
        if not out.exists():
            os.replace(staging, out)
            return
        if not out.is_dir():
            raise NotADirectoryError(f"{out} exists and is not a folder; choose another output path.")
        files = sorted(staging.iterdir(), key=lambda p: (p.suffix == ".json", p.name))
        for f in files:
            target = out / f.name
            if target.is_dir() and not f.is_dir():
                shutil.rmtree(target)
            os.replace(f, target)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
