"""Helpers for the engine tests (no tests here): engines over test artifacts, HF references."""

from __future__ import annotations

import asyncio
import functools
from pathlib import Path
from typing import Any

import numpy as np

from webrt.engine import AppConfig, Engine, ModelRecord


def run(coroutine: Any) -> Any:
    """Run one test coroutine on a fresh event loop."""
    return asyncio.run(coroutine)


def record_for(art: Any, model_id: str = "tiny", **fields: Any) -> ModelRecord:
    return ModelRecord(model=str(art.model_dir), model_id=model_id, model_lib=str(art.libs["cpu"]), **fields)


async def engine_for(art: Any, chat_opts: Any = None, model_id: str = "tiny") -> Engine:
    engine = Engine(AppConfig([record_for(art, model_id)]))
    await engine.reload(model_id, chat_opts)
    return engine


@functools.lru_cache(maxsize=8)
def hf_model(path: str, gguf_file: str | None = None) -> Any:
    import torch
    import transformers

    kwargs: dict[str, Any] = {"torch_dtype": torch.float32}
    if gguf_file is not None:
        kwargs.update(gguf_file=gguf_file, local_files_only=True)
    return transformers.AutoModelForCausalLM.from_pretrained(path, **kwargs).eval()


def smollm2_reference() -> Any:
    """transformers on the SmolLM2-135M-Instruct GGUF: the reference model of the SmolLM2 tests."""
    from model_factory import smollm2_gguf

    gguf = smollm2_gguf()
    return hf_model(str(gguf.parent), gguf.name)


def smollm2_chat_ids(messages: list[dict[str, Any]]) -> list[int]:
    """transformers' ``apply_chat_template`` ids for ``messages`` (SmolLM2's own template)."""
    from model_factory import smollm2_gguf
    from transformers import AutoTokenizer

    gguf = smollm2_gguf()
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name, local_files_only=True)
    return list(tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False))


async def two_turns(engine: Engine, first: list[dict[str, Any]], follow_up: str,
                    max_tokens: int) -> tuple[list[dict[str, Any]], Any, Any]:
    """Ask ``first``, then ``follow_up`` after the greedy reply: (the second turn's messages, the
    first reply, the second reply)."""
    one = await engine.chat.completions.create(messages=first, temperature=0, max_tokens=max_tokens)
    history = [*first, {"role": "assistant", "content": one.choices[0].message.content},
               {"role": "user", "content": follow_up}]
    two = await engine.chat.completions.create(messages=history, temperature=0, max_tokens=max_tokens)
    return history, one, two


def hf_logits(model: Any, tokens: list[int]) -> np.ndarray:
    """Logits after the last token (float64 for references)."""
    import torch

    with torch.no_grad():
        return model(torch.tensor([tokens])).logits[0, -1].double().numpy()


def hf_tokenizer(model_dir: Path) -> Any:
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(model_dir / "tokenizer.json"))


def apply_penalties(logits: np.ndarray, counts: dict[int, int], presence: float, frequency: float,
                    repetition: float) -> np.ndarray:
    """OpenAI's presence/frequency formula, then the CTRL repetition penalty, on seen tokens."""
    out = logits.copy()
    for token, count in counts.items():
        value = out[token] - presence * (count > 0) - frequency * count
        out[token] = value * repetition if value < 0 else value / repetition
    return out


def hf_greedy(model: Any, prompt: list[int], steps: int, stop_ids: set[int] = frozenset(),
              penalties: tuple[float, float, float] | None = None,
              bias: dict[int, float] | None = None) -> tuple[list[int], list[np.ndarray]]:
    """Greedy continuation (with optional logit bias and penalties); the logits of each step."""
    tokens, out, logits_seen = list(prompt), [], []
    counts: dict[int, int] = {}
    for _ in range(steps):
        logits = hf_logits(model, tokens)
        for token, value in (bias or {}).items():
            logits[token] += value
        if penalties is not None and counts:
            logits = apply_penalties(logits, counts, *penalties)
        logits_seen.append(logits)
        nxt = int(np.argmax(logits))
        if nxt in stop_ids:
            break
        out.append(nxt)
        tokens.append(nxt)
        counts[nxt] = counts.get(nxt, 0) + 1
    return out, logits_seen


def log_softmax(logits: np.ndarray) -> np.ndarray:
    peak = logits.max()
    return logits - peak - np.log(np.exp(logits - peak).sum())


def top_p_choice(logits: np.ndarray, temperature: float, top_p: float, uniform: float) -> tuple[int, float]:
    """Nucleus sampling the way the device kernels do it; also the distance of ``uniform``
    (and of ``top_p``) from the nearest decision boundary, to skip draws float32 rounding
    could flip.

    The cut keeps the smallest set of most likely tokens whose mass reaches ``top_p`` (found
    here by sorting); the inverse CDF then runs over the kept probabilities in token-id order."""
    scaled = (logits - logits.max()) / temperature
    probs = np.exp(scaled) / np.exp(scaled).sum()
    margin = 1.0
    if top_p < 1.0:
        descending = np.sort(probs)[::-1]
        mass = np.cumsum(descending)
        cut = int(np.argmax(mass >= top_p)) if mass[-1] >= top_p else len(probs) - 1
        margin = float(np.min(np.abs(mass - top_p)))
        probs = np.where(probs >= descending[cut], probs, 0.0)
    cumulative = np.cumsum(probs) / probs.sum()
    pick = int(np.argmax(uniform < cumulative)) if uniform < cumulative[-1] else int(np.flatnonzero(probs)[-1])
    margin = min(margin, float(np.min(np.abs(cumulative[probs > 0] - uniform))))
    return pick, margin


def token_ids_from_logprobs(engine: Engine, content: list[dict[str, Any]]) -> list[int]:
    """Token ids of a logprobs ``content`` list (token bytes are unique in a BPE vocabulary)."""
    table = engine.get_model().token_bytes()
    by_bytes = {data: i for i, data in enumerate(table) if data}
    return [by_bytes[bytes(entry["bytes"])] for entry in content]


def native_greedy_steps(art: Any, prompt: list[int], steps: int) -> dict[str, Any]:
    """Prefill `prompt`, then `steps` greedy decode steps with the CPU library on TVM's runtime:
    every step's logits and the tokens (the reference the browser paths are checked against)."""
    from webrt.chat_config import window_config
    from webrt.engine.model_runner import ModelRunner
    from webrt.native.backend import NativeBackend

    runner = ModelRunner(NativeBackend(art.model_dir, art.libs["cpu"]), window_config(art.chat_config))
    logits = runner.prefill(prompt)
    out: dict[str, Any] = {"logits": [runner.logits_to_list(logits)], "tokens": [runner.argmax(logits)]}
    for _ in range(steps):
        logits = runner.decode(out["tokens"][-1])
        out["logits"].append(runner.logits_to_list(logits))
        out["tokens"].append(runner.argmax(logits))
    runner.backend.close()
    return out
