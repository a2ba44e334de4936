"""The browser's CPU side by side, in paired rounds: CPU libraries (``webrt compile --device wasm``)
under TVM's JS runtime and under webrt in headless Chromium, beside llama.cpp's wasm build (wllama)
on the GGUF the model was built from, and (``--node``) the same libraries under TVM's JS runtime in
node (`tvmjs_node.js`).

On a machine whose cores other jobs share, one run of each runtime says little: a round runs every
(runtime, library) pair back to back, each in a fresh profile as `browser_bench` does, so the
ratios within a round are taken under the same load. The libraries may be several builds of one
model (an A/B of two schedules)::

    webrt bench cpu --model dist/smollm2-gguf_f32 \\
        --lib old=dist/smollm2-gguf_f32/lib-wasm-old.wasm --lib new=dist/smollm2-gguf_f32/lib-wasm.wasm \\
        --gguf $GGUF --wllama-threads 1 2 --rounds 3 --steps 16

``--threads 1 2`` adds a column of webrt on two CPU threads (`webrt.wasm.threads`: the page is
cross-origin isolated and webrt runs in a module worker there), to set beside ``--wllama-threads 2``.

prints one Markdown table (median decode ms/token per round, prefill, ready) and the ratios.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from webrt.tools.bench.browser_bench import BrowserModel

RUNTIMES = ("tvmjs", "webrt")


def _median(values: list[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def run_node(model_dir: Path, libs: list[Path], prompt: list[int], steps: int, warmup: int, rounds: int,
             timeout_s: float = 1800, logits: bool = False, threads: int | list[int] = 1) -> list[dict[str, Any]]:
    """`tvmjs_node.js`: every library loaded once in one node process, rounds taken in turn (with
    `logits`, each run also holds every step's logits; with `threads` > 1 (one count, or one per
    library) the library's thread pool runs on worker_threads)."""
    opts = {"model": str(model_dir), "libs": [str(p) for p in libs], "prompt": prompt, "steps": steps,
            "warmup": warmup, "rounds": rounds, "logits": logits, "threads": threads}
    from webrt.tools.bench.browser_bench import BENCH_DIR

    proc = subprocess.run(["node", str(BENCH_DIR / "tvmjs_node.js"), json.dumps(opts)], capture_output=True,
                          text=True, timeout=timeout_s)
    if proc.returncode != 0:
        raise RuntimeError(f"tvmjs_node.js failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout)


def run_rounds(model_dir: Path, libs: dict[str, Path], gguf: Path | None, rounds: int, steps: int, warmup: int,
               prompt_len: int, wllama_threads: tuple[int, ...], runtimes: tuple[str, ...], node: bool,
               timeout_s: float = 900, log=print, threads: tuple[int, ...] = (1,)) -> dict[str, Any]:
    """{"rounds": [{row label: result}], "node": [...]} (see the module docstring)."""
    # imported here, not at the top: `webrt`'s parser reads this module's options at every start
    from webrt.tools.bench.browser_bench import (BrowserModel, _options, bench_server, bench_tvmjs_cpu,
                                                 bench_webrt_cpu, bench_wllama)

    models = [BrowserModel(label, model_dir, path, gguf if i == 0 else None, path)
              for i, (label, path) in enumerate(libs.items())]
    out: dict[str, Any] = {"rounds": []}
    with bench_server(models) as server:
        opts = {m.label: _options(m, server, steps, warmup, prompt_len) for m in models}
        for r in range(rounds):
            row: dict[str, Any] = {}
            for m in (models if r % 2 == 0 else models[::-1]):  # every other round in reverse order
                if "tvmjs" in runtimes:
                    row[f"tvmjs {m.label}"] = bench_tvmjs_cpu(server, opts[m.label], m, timeout_s, log)["cold"]
                if "webrt" in runtimes:
                    for n in threads:
                        name = f"webrt {m.label}" + (f" {n} threads" if n > 1 else "")
                        row[name] = bench_webrt_cpu(server, opts[m.label], m, timeout_s, log, threads=n)
            if gguf is not None:
                for n in wllama_threads:
                    row[f"wllama {n} thread(s)"] = bench_wllama(server, opts[models[0].label], models[0], n,
                                                                timeout_s, log)
            out["rounds"].append({k: row[k] for k in sorted(row, key=_column_order(models))})
            log(f"[rounds] round {r + 1}: " + ", ".join(f"{k} {decode_ms(v):.1f}" for k, v in row.items()))
        out["prompt"] = opts[models[0].label]["prompt"]
    if node:
        log("[rounds] node ...")
        paths = [p for _ in threads for p in libs.values()]  # every library at every thread count
        out["node"] = run_node(model_dir, paths, out["prompt"], steps, warmup, rounds,
                               threads=[n for n in threads for _ in libs])
    return out


def _column_order(models: list[BrowserModel]):
    """Sort key of a round's columns: by runtime, then in the libraries' order (wllama last)."""
    labels = [m.label for m in models]

    def key(name: str) -> tuple[int, int, str]:
        runtime, _, label = name.partition(" ")
        return (RUNTIMES.index(runtime) if runtime in RUNTIMES else len(RUNTIMES),
                labels.index(label) if label in labels else 0, name)

    return key


def decode_ms(result: dict[str, Any]) -> float:
    """Median decode ms/token of one run (any runtime's result shape)."""
    if "stepMs" in result:
        return _median(result["stepMs"])
    cold = result.get("cold", result)
    if "decodeMsPerToken" in cold:
        return float(cold["decodeMsPerToken"])
    return _median(cold.get("stepMs", []))


def cpu_ms(result: dict[str, Any]) -> float:
    """Chromium's CPU ms per timed decode step of one run (NaN when not measured)."""
    value = result.get("cold", result).get("cpuMsPerStep")
    return float("nan") if value is None else float(value)


def _ratio_table(rows: list[dict[str, Any]], names: list[str], measure) -> list[str]:
    lines = ["| round | " + " | ".join(names) + " | " + " | ".join(f"{n} / {names[0]}" for n in names[1:]) + " |",
             "|---" * (1 + 2 * len(names) - 1) + "|"]
    for i, row in enumerate(rows):
        ms = [measure(row[n]) for n in names]
        lines.append(f"| {i + 1} | " + " | ".join(f"{v:.1f}" for v in ms) + " | "
                     + " | ".join(f"{v / ms[0]:.2f}x" for v in ms[1:]) + " |")
    return lines


def table(result: dict[str, Any]) -> str:
    """Median decode ms/token per round and runtime, then the ratios to the first column; the same
    for Chromium's CPU time per step (for a 2-thread run it counts both threads)."""
    rows = result["rounds"]
    names = list(rows[0])
    lines = ["Decode ms/token (wall clock, median of the timed steps; wllama: its own per-token time):", "",
             *_ratio_table(rows, names, decode_ms), "",
             "Chromium's CPU time per decode step (ms, all its processes, `webrt.tools.bench.cpu_time`):", "",
             *_ratio_table(rows, names, cpu_ms)]
    first = rows[0]
    notes = []
    for n in names:
        cold = first[n].get("cold", first[n])
        warm = first[n].get("warm", {})
        notes.append(f"- {n}: ready {cold.get('readyMs', float('nan')) / 1e3:.1f} s cold"
                     + (f", {warm['readyMs'] / 1e3:.1f} s warm" if "readyMs" in warm else "")
                     + (f"; prefill {cold['prefillMs']:.0f} ms" if "prefillMs" in cold else ""))
    tokens = {n: (row[n].get("cold", row[n]).get("tokens")) for row in rows[:1] for n in names}
    runs = [t for t in tokens.values() if t]
    same = all(t == runs[0] for t in runs)
    notes.append(f"- same greedy tokens from every webrt/tvmjs run of round 1: {'yes' if same else 'NO'}")
    if "node" in result:
        node = result["node"]
        lines_node = ["", "node (TVM's JS runtime, one process, libraries in turn; wall clock, then the process's CPU "
                      "time per step):", "",
                      "| round | " + " | ".join(_node_name(r) for r in node) + " | ratio | "
                      + " | ".join(f"{_node_name(r)} CPU" for r in node) + " | CPU ratio |",
                      "|---" * (2 * len(node) + 3) + "|"]
        for i in range(len(node[0]["rounds"])):
            ms = [_median(r["rounds"][i]) for r in node]
            cpu = [_median(r["cpuRounds"][i]) for r in node]
            lines_node.append(f"| {i + 1} | " + " | ".join(f"{v:.1f}" for v in ms) + f" | {ms[-1] / ms[0]:.2f}x | "
                              + " | ".join(f"{v:.1f}" for v in cpu) + f" | {cpu[-1] / cpu[0]:.2f}x |")
        notes += lines_node
        notes.append(f"\nsame tokens in node: {'yes' if all(r['tokens'] == node[0]['tokens'] for r in node) else 'NO'}")
    return "\n".join(lines + [""] + notes)


def _node_name(run: dict[str, Any]) -> str:
    threads = run.get("threads", 1)
    return Path(run["lib"]).name + (f" {threads} threads" if threads > 1 else "")


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``webrt bench cpu`` (and of this module run as a script)."""
    p.add_argument("--model", required=True, type=Path, help="model folder (weights, mlc-chat-config.json)")
    p.add_argument("--lib", action="append", required=True, help="LABEL=PATH of a --device wasm library (repeat)")
    p.add_argument("--gguf", type=Path, help="the GGUF the model was built from, for the wllama rows")
    p.add_argument("--wllama-threads", type=int, nargs="*", default=[1])
    p.add_argument("--threads", type=int, nargs="+", default=[1],
                   help="webrt's CPU threads (one column each; >1 runs webrt in a worker of the cross-origin "
                        "isolated page; with --node, every library at each count)")
    p.add_argument("--runtimes", nargs="*", default=list(RUNTIMES), choices=RUNTIMES)
    p.add_argument("--node", action="store_true", help="also time the libraries in node")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=16)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--prompt-len", type=int, default=8)
    p.add_argument("--json", type=Path, help="write the raw results here")


def run(a: argparse.Namespace) -> None:
    """Run the rounds ``a`` (parsed `add_arguments` options) asks for and print the table."""
    libs = dict(item.split("=", 1) for item in a.lib)
    result = run_rounds(a.model, {k: Path(v) for k, v in libs.items()}, a.gguf, a.rounds, a.steps, a.warmup,
                        a.prompt_len, tuple(a.wllama_threads), tuple(a.runtimes), a.node,
                        log=lambda m: print(m, file=sys.stderr, flush=True), threads=tuple(a.threads))
    if a.json:
        a.json.write_text(json.dumps(result))
    print(table(result))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(p)
    run(p.parse_args(argv))


if __name__ == "__main__":
    main()
