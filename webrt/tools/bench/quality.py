"""``webrt bench quality``: how far a built model is from the model it was built from.

Teacher-forced on a text the user gives: the text's tokens go through the CPU library one decode
step at a time (what the engine runs per token), and at every position the library's next-token
distribution is compared with the reference model's: transformers on the same source, fp32 (for
a GGUF, the file's own dequantized weights, as transformers reads them). Reported: perplexity of
both, the difference in percent, mean KL(reference || library) in nats, and how often both put the
same token first.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from webrt.chat_config import CHAT_CONFIG_FILE, TOKENIZER_JSON
from webrt.errors import ModelConfigError


@dataclass
class QualityModel:
    """A model folder and its CPU library, measured under `label`."""

    label: str
    model_dir: Path
    lib: Path


def text_token_ids(model_dir: Path, text: str, max_tokens: int) -> list[int]:
    """The text's token ids by the model's own tokenizer.json (HF tokenizers), no special tokens."""
    from tokenizers import Tokenizer

    path = Path(model_dir) / TOKENIZER_JSON
    if not path.is_file():
        raise ModelConfigError(f"{path} is missing; `webrt bench quality` tokenizes the text with it "
                               "(run `webrt gen_config` into the model folder).")
    ids = Tokenizer.from_file(str(path)).encode(text, add_special_tokens=False).ids[:max_tokens]
    if len(ids) < 2:
        raise ModelConfigError("the text gives fewer than 2 tokens; pass a longer --text.")
    return ids


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise log-softmax in float64."""
    x = logits.astype(np.float64)
    x -= x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def reference_logprobs(source: Path, ids: list[int], threads: int = 2) -> np.ndarray:
    """[len(ids) - 1, V] next-token log-probs of transformers (fp32) on `source` (HF folder or GGUF)."""
    import torch
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(threads)
    source = Path(source)
    kwargs: dict[str, Any] = {"local_files_only": True, "dtype": torch.float32}
    if source.is_file():
        model = AutoModelForCausalLM.from_pretrained(str(source.parent), gguf_file=source.name, **kwargs)
    else:
        model = AutoModelForCausalLM.from_pretrained(str(source), **kwargs)
    with torch.no_grad():
        logits = model.eval()(input_ids=torch.tensor([ids])).logits[0, :-1].float().numpy()
    return log_softmax(logits)


def library_logprobs(model: QualityModel, ids: list[int]) -> np.ndarray:
    """[len(ids) - 1, V] next-token log-probs of the CPU library, fed one token per decode step."""
    from webrt.chat_config import window_config
    from webrt.engine.model_runner import ModelRunner
    from webrt.native.backend import NativeBackend

    config = json.loads((Path(model.model_dir) / CHAT_CONFIG_FILE).read_text())
    runner = ModelRunner(NativeBackend(model.model_dir, model.lib), window_config(config))
    if len(ids) > runner.window.max_total_length:
        raise ModelConfigError(f"{len(ids)} tokens do not fit {model.label}'s window of "
                               f"{runner.window.max_total_length}; pass a smaller --max-tokens.")
    rows = [runner.logits_to_list(runner.prefill(ids[:1]))]
    rows += [runner.logits_to_list(runner.decode(token)) for token in ids[1:-1]]
    return log_softmax(np.asarray(rows, dtype=np.float32))


def browser_library_logprobs(model: QualityModel, ids: list[int], timeout_s: float = 1800) -> np.ndarray:
    """[len(ids) - 1, V] next-token log-probs of the WebGPU library (``model.lib`` is the .wasm) in
    headless Chromium, fed one token per decode step by webrt's runtime on Pyodide."""
    import base64

    from webrt.tools.bench.browser_bench import BrowserModel, bench_server, run_page_python
    from webrt.tools.chromium import chromium_page

    page_model = BrowserModel(model.label, Path(model.model_dir), Path(model.lib))
    with bench_server([page_model]) as server, chromium_page() as page:
        page.goto(server.url("/webrt.html"))
        rows = run_page_python(page, "page_quality.py", "webrt_quality_logits",
                               {"model": f"/models/{page_model.slug}/", "ids": ids,
                                "wasm": f"/libs/{page_model.slug}/{page_model.wasm.name}"}, timeout_s)
    return log_softmax(np.stack([np.frombuffer(base64.b64decode(r), dtype=np.float32) for r in rows]))


def compare(reference: np.ndarray, library: np.ndarray, ids: list[int]) -> dict[str, float]:
    """Perplexities, KL(reference || library) and top-1 agreement over the teacher-forced positions."""
    vocab = min(reference.shape[1], library.shape[1])
    ref, lib = reference[:, :vocab], library[:, :vocab]
    targets = np.asarray(ids[1:])
    rows = np.arange(len(targets))
    ref_nll, lib_nll = -ref[rows, targets].mean(), -lib[rows, targets].mean()
    kl = (np.exp(ref) * (ref - lib)).sum(axis=1)
    return {"tokens": len(targets), "reference_ppl": math.exp(ref_nll), "ppl": math.exp(lib_nll),
            "ppl_delta_pct": (math.exp(lib_nll - ref_nll) - 1) * 100, "mean_kl": float(kl.mean()),
            "top1_agreement": float((ref.argmax(axis=1) == lib.argmax(axis=1)).mean())}


def bench_quality(models: list[QualityModel], reference: Path, text: str, max_tokens: int = 512,
                  threads: int = 2, browser: bool = False) -> list[dict[str, Any]]:
    """One row per model: its quality against `reference` on the same token ids; with `browser`,
    the libraries are WebGPU ones run in headless Chromium."""
    ids = text_token_ids(models[0].model_dir, text, max_tokens)
    t0 = time.perf_counter()
    ref = reference_logprobs(reference, ids, threads)
    ref_s = time.perf_counter() - t0
    rows = []
    for model in models:
        if text_token_ids(model.model_dir, text, max_tokens) != ids:
            raise ModelConfigError(f"{model.label} tokenizes the text differently from {models[0].label}; "
                                   "compare models of one tokenizer in one run.")
        config = json.loads((Path(model.model_dir) / CHAT_CONFIG_FILE).read_text())
        t0 = time.perf_counter()
        lib = browser_library_logprobs(model, ids) if browser else library_logprobs(model, ids)
        rows.append({"label": model.label, "quantization": config.get("quantization"),
                     "where": "WebGPU library, Chromium" if browser else "CPU library, TVM runtime",
                     "reference": str(reference), "reference_s": ref_s, "library_s": time.perf_counter() - t0,
                     **compare(ref, lib, ids)})
    return rows
