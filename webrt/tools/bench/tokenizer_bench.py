"""The pure-Python tokenizer's speed under CPython and under Pyodide (Node), side by side.

Both run :func:`webrt.tools.bench.tokenizer_measure.measure` on the same files and corpus; Pyodide is npm
``pyodide`` (the browser's Python 3.14, without a browser around it) with the repository and
the files mounted read-only through Node's file system.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from webrt.errors import ToolchainError
from webrt.tools.bench.tokenizer_measure import corpus_lines, measure
from webrt.tools.paths import PACKAGE_DIR


_NODE_SCRIPT = r"""
import { loadPyodide } from "%(pyodide)s";
const py = await loadPyodide();
for (const [dir, root] of %(mounts)s) {
  py.FS.mkdirTree(dir);
  py.FS.mount(py.FS.filesystems.NODEFS, { root }, dir);
}
const out = py.runPython(`
import json, sys
sys.path.insert(0, "/repo")
from webrt.tools.bench.tokenizer_measure import corpus_lines, measure
lines = corpus_lines("/corpus/%(corpus)s")
json.dumps({"python": sys.version.split()[0], "results": [measure(p, lines) for p in %(paths)s]})
`);
console.log(out);
"""


def label(path: Path) -> str:
    """How a tokenizer file is named in the table: the nearest folder not called model(s)."""
    folders = [p.name for p in path.resolve().parents if p.name not in ("models", "model")]
    return folders[0] if folders else path.name


def run_cpython(tokenizers: list[Path], corpus: Path) -> list[dict[str, Any]]:
    lines = corpus_lines(str(corpus))
    results = [measure(str(path), lines) for path in tokenizers]
    for path, result in zip(tokenizers, results):
        result["tokenizer"] = label(path)
    return results


def run_pyodide(tokenizers: list[Path], corpus: Path, pyodide: Path) -> tuple[str, list[dict[str, Any]]]:
    node = shutil.which("node")
    if node is None:
        raise ToolchainError("node is not installed; `apt-get install nodejs`")
    if not pyodide.is_file():
        raise ToolchainError(f"{pyodide} is missing; run `npm ci` in the repository")
    mounts = [["/repo", str(PACKAGE_DIR.parent)], ["/corpus", str(corpus.resolve().parent)]]
    paths = []
    for i, path in enumerate(tokenizers):
        mounts.append([f"/tok{i}", str(path.resolve().parent)])
        paths.append(f"/tok{i}/{path.name}")
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "bench.mjs"
        script.write_text(
            _NODE_SCRIPT
            % {"pyodide": pyodide.resolve().as_posix(), "mounts": json.dumps(mounts), "corpus": corpus.name, "paths": json.dumps(paths)}
        )
        run = subprocess.run([node, str(script)], capture_output=True, text=True, timeout=1800)
    if run.returncode != 0:
        raise ToolchainError(f"the Pyodide run failed: {run.stderr[-2000:]}")
    data = json.loads(run.stdout.strip().splitlines()[-1])
    for path, result in zip(tokenizers, data["results"]):
        result["tokenizer"] = label(path)  # the mount point replaced the folder name
    return data["python"], data["results"]


def table(rows: list[tuple[str, dict[str, Any]]]) -> str:
    """Markdown: one row per (host, measurement)."""
    head = (
        "| tokenizer | Python | load | encode, cold cache | encode, warm | one long string | decode | streaming |\n"
        "|---|---|---|---|---|---|---|---|"
    )
    body = [
        f"| {m['tokenizer']} | {host} | {m['load_s']:.2f} s | {m['cold_tok_s']:,.0f} tok/s "
        f"({m['cold_chars_s']:,.0f} chars/s) | {m['warm_tok_s']:,.0f} tok/s | {m['one_string_tok_s']:,.0f} tok/s | "
        f"{m['decode_tok_s']:,.0f} tok/s | {m['stream_tok_s']:,.0f} tok/s |"
        for host, m in rows
    ]
    return "\n".join([head, *body])
