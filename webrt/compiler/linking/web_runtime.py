"""Build TVM's web runtime objects (wasm_runtime, tvmjs_support, webgpu_runtime) with emcc.

The `apache-tvm` wheel ships the C++ sources of its web runtime but not the compiled objects that
every WebGPU model library links against. This module stages those sources (from the `apache-tvm`
and `apache-tvm-ffi` wheels, plus webrt's own versions of the nine headers neither wheel ships,
in `web_runtime_include/`) into a tree laid out like TVM's repository, compiles the three objects
with Debian's emcc as real wasm objects, and caches them under
`$WEBRT_CACHE_DIR/tvm-web/<tvm version>-<hash of inputs and flags>/` (default
`~/.cache/webrt/tvm-web/...`).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import fcntl
import hashlib
import importlib.metadata
import importlib.util
import json
import logging
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from webrt.errors import ToolchainError

log = logging.getLogger(__name__)

#: The runtime objects, in link order.
RUNTIME_OBJECTS: tuple[str, ...] = ("wasm_runtime", "tvmjs_support", "webgpu_runtime")
#: The objects a CPU (``--device wasm``) library links: everything but the WebGPU runtime.
CPU_RUNTIME_OBJECTS: tuple[str, ...] = ("wasm_runtime", "tvmjs_support")
#: Flags of TVM's web/Makefile, minus -emit-llvm: TVM's LLVM 22 bitcode does not link with
#: Emscripten 3.1.6's wasm-ld 14, while real wasm objects do.
COMPILE_FLAGS: tuple[str, ...] = ("-O3", "-std=c++17", "-Wno-ignored-attributes")
#: Include directories relative to the staged tree (the same set as TVM's web/Makefile).
INCLUDE_DIRS: tuple[str, ...] = (
    ".",
    "include",
    "3rdparty/tvm-ffi/include",
    "3rdparty/tvm-ffi/3rdparty/dlpack/include",
    "3rdparty/compiler-rt",
)
EMCC_INSTALL_HINT = "install Emscripten with `apt-get install emscripten` (Debian/Ubuntu)"
DEBIAN_NODE_PATH = "/usr/share/nodejs"
OWN_HEADERS_DIR = Path(__file__).with_name("web_runtime_include")
_SOURCE_SUFFIXES = (".h", ".cc")
_COMPILE_TIMEOUT_S = 1800
_MANIFEST = "manifest.json"


@dataclass(frozen=True)
class StagedFile:
    """One input file: where it goes in the staged tree and where it comes from."""

    rel: str
    src: Path


def find_emcc() -> str:
    """Return the path of emcc, or raise ToolchainError naming the package to install."""
    emcc = shutil.which("emcc")
    if emcc is None:
        raise ToolchainError(f"emcc (Emscripten) was not found on PATH; {EMCC_INSTALL_HINT}")
    return emcc


def emcc_env() -> dict[str, str]:
    """Environment for running emcc: Debian's emcc JS passes need NODE_PATH to find acorn."""
    env = dict(os.environ)
    parts = [p for p in env.get("NODE_PATH", "").split(os.pathsep) if p]
    if DEBIAN_NODE_PATH not in parts and Path(DEBIAN_NODE_PATH).is_dir():
        parts.append(DEBIAN_NODE_PATH)
    env["NODE_PATH"] = os.pathsep.join(parts)
    return env


def emcc_version(emcc: str) -> str:
    """First line of `emcc --version` (part of the cache key)."""
    try:
        proc = subprocess.run(
            [emcc, "--version"], capture_output=True, text=True, env=emcc_env(), timeout=120
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ToolchainError(f"could not run {emcc} --version: {exc}; {EMCC_INSTALL_HINT}") from exc
    if proc.returncode != 0:
        raise ToolchainError(f"{emcc} --version failed:\n{proc.stderr.strip()}")
    return proc.stdout.splitlines()[0].strip() if proc.stdout else ""


def _package_dir(name: str) -> Path:
    """Directory of an installed package, found without importing it."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise ToolchainError(f"the Python package {name!r} is not installed")
    return Path(next(iter(spec.submodule_search_locations)))


def tvm_version() -> str:
    """Installed apache-tvm version (e.g. 0.27.0.post1)."""
    return importlib.metadata.version("apache-tvm")


def _tree(root: Path, dest: str) -> Iterator[StagedFile]:
    if not root.is_dir():
        raise ToolchainError(f"expected TVM web runtime sources in {root}, which is missing")
    for path in sorted(root.rglob("*")):
        if path.is_file() and path.suffix in _SOURCE_SUFFIXES and "__pycache__" not in path.parts:
            yield StagedFile(f"{dest}/{path.relative_to(root).as_posix()}", path)


def staged_files() -> list[StagedFile]:
    """All inputs, mapped onto TVM's repository layout.

    webrt's own headers fill only paths the wheels leave empty, so a future wheel that ships
    them wins.
    """
    tvm_dir, ffi_dir = _package_dir("tvm"), _package_dir("tvm_ffi")
    files: dict[str, StagedFile] = {}
    for root, dest in (
        (tvm_dir / "include", "include"),
        (tvm_dir / "src" / "runtime", "src/runtime"),
        (tvm_dir / "web" / "emcc", "web/emcc"),
        (ffi_dir / "include", "3rdparty/tvm-ffi/include"),
        (ffi_dir / "src", "3rdparty/tvm-ffi/src"),
        (ffi_dir / "3rdparty" / "dlpack" / "include", "3rdparty/tvm-ffi/3rdparty/dlpack/include"),
    ):
        files.update((f.rel, f) for f in _tree(root, dest))
    for f in _tree(OWN_HEADERS_DIR, "."):
        rel = f.rel.removeprefix("./")
        files.setdefault(rel, StagedFile(rel, f.src))
    for name in RUNTIME_OBJECTS:
        if f"web/emcc/{name}.cc" not in files:
            raise ToolchainError(f"TVM's web runtime source web/emcc/{name}.cc is missing")
    return sorted(files.values(), key=lambda f: f.rel)


def cache_root() -> Path:
    """Root of webrt's caches: $WEBRT_CACHE_DIR, else ~/.cache/webrt."""
    env = os.environ.get("WEBRT_CACHE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "webrt"


def build_key(files: list[StagedFile], emcc_ver: str) -> str:
    """Hash of every input file, the flags and the toolchain version."""
    h = hashlib.sha256()
    meta = {"flags": COMPILE_FLAGS, "includes": INCLUDE_DIRS, "paths": "relative",
            "emcc": emcc_ver}
    h.update(json.dumps(meta, sort_keys=True).encode())
    for f in files:
        h.update(f.rel.encode() + b"\0" + hashlib.sha256(f.src.read_bytes()).digest())
    return h.hexdigest()[:16]


def runtime_dir_for(key: str) -> Path:
    """Cache directory of one build key."""
    return cache_root() / "tvm-web" / f"{tvm_version()}-{key}"


def object_paths(runtime_dir: Path, webgpu: bool = True) -> list[Path]:
    """The runtime objects in `runtime_dir`, in link order (without `webgpu_runtime` when
    `webgpu` is false: a CPU library)."""
    names = RUNTIME_OBJECTS if webgpu else CPU_RUNTIME_OBJECTS
    return [runtime_dir / f"{name}.o" for name in names]


def _is_complete(runtime_dir: Path) -> bool:
    paths = [runtime_dir / _MANIFEST, *object_paths(runtime_dir)]
    return all(p.is_file() for p in paths)


def _stage(files: list[StagedFile], stage: Path) -> None:
    for f in files:
        dst = stage / f.rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(f.src, dst)


def _compile_one(emcc: str, stage: Path, name: str, out: Path) -> float:
    """Compile web/emcc/<name>.cc to `out`; return the seconds it took.

    Paths are relative to the staged tree, so the objects (which record source paths in error
    messages and type names) do not depend on the temporary directory: builds are reproducible.
    """
    cmd = [emcc, *COMPILE_FLAGS, *(f"-I{d}" for d in INCLUDE_DIRS)]
    cmd += ["-c", f"web/emcc/{name}.cc", "-o", str(out)]
    t0 = time.monotonic()
    try:
        proc = subprocess.run(
            cmd, cwd=stage, capture_output=True, text=True, env=emcc_env(),
            timeout=_COMPILE_TIMEOUT_S,
        )
    except subprocess.TimeoutExpired as exc:
        raise ToolchainError(f"emcc timed out after {_COMPILE_TIMEOUT_S} s on {name}.cc") from exc
    except OSError as exc:
        raise ToolchainError(f"could not run {emcc}: {exc}; {EMCC_INSTALL_HINT}") from exc
    if proc.returncode != 0:
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-60:])
        raise ToolchainError(f"emcc failed on {name}.cc (exit {proc.returncode}):\n{tail}")
    with out.open("rb") as fh:
        if fh.read(4) != b"\0asm":
            raise ToolchainError(f"emcc wrote {out.name}, which is not a wasm object")
    return time.monotonic() - t0


@contextlib.contextmanager
def _lock(path: Path) -> Iterator[None]:
    """Exclusive inter-process lock so concurrent builds of one key run once."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _build(emcc: str, files: list[StagedFile], final: Path, key: str, jobs: int) -> None:
    tmp = Path(tempfile.mkdtemp(prefix=f".build-{key}-", dir=final.parent))
    try:
        stage, out = tmp / "stage", tmp / "out"
        _stage(files, stage)
        out.mkdir()
        log.info("compiling TVM web runtime %s with %s (%d jobs)", final.name, emcc, jobs)
        t0 = time.monotonic()
        with concurrent.futures.ThreadPoolExecutor(max_workers=jobs) as pool:
            futures = {
                name: pool.submit(_compile_one, emcc, stage, name, out / f"{name}.o")
                for name in RUNTIME_OBJECTS
            }
            seconds = {name: round(fut.result(), 1) for name, fut in futures.items()}
        manifest = {
            "tvm_version": tvm_version(),
            "key": key,
            "emcc": emcc_version(emcc),
            "flags": list(COMPILE_FLAGS),
            "compile_seconds": seconds,
            "wall_seconds": round(time.monotonic() - t0, 1),
        }
        (out / _MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        if final.exists():  # --force: move the old build away, then swap the new one in
            old = tmp / "old"
            final.rename(old)
        out.rename(final)
        log.info("built TVM web runtime in %.0f s: %s", manifest["wall_seconds"], final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def ensure_web_runtime(*, force: bool = False, jobs: int | None = None) -> Path:
    """Build the three runtime objects if not cached; return the directory holding them.

    Raises ToolchainError when emcc is missing or a compile fails.
    """
    emcc = find_emcc()
    files = staged_files()
    key = build_key(files, emcc_version(emcc))
    final = runtime_dir_for(key)
    if not force and _is_complete(final):
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    with _lock(final.parent / f".{final.name}.lock"):
        if force or not _is_complete(final):
            n = jobs if jobs and jobs > 0 else min(len(RUNTIME_OBJECTS), os.cpu_count() or 1)
            _build(emcc, files, final, key, n)
    return final
