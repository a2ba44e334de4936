"""The engine's pure-Python code under Pyodide (Python 3.14, its asyncio WebLoop) in Node.

The model library is replaced by :class:`ListBackend`, a pure-Python implementation of the
library contract (embed / prefill / decode over a paged-cache stand-in, and the sampling and
in-place logit kernels) whose logits are a fixed function of the context. The same engine
requests (greedy, seeded top-p sampling with penalties and logit bias, logprobs, stop strings,
JSON mode, streaming, cache reuse) run under CPython and under Pyodide; the responses must be
identical, so the engine behaves the same in both hosts.
"""

from __future__ import annotations

import json
from pathlib import Path

from model_factory import tiny_artifacts
from pyodide_util import run_in_node_pyodide

# Runs in both hosts: a backend made of Python lists, and the requests to compare.
SCENARIO = r'''
import asyncio, json, math, struct
from webrt.engine import AppConfig, Engine, ModelRecord


class ListTensor:
    def __init__(self, values, shape, dtype="float32"):
        self.values, self.shape, self.dtype = values, tuple(shape), dtype


class Cache:
    def __init__(self):
        self.tokens, self.pending = [], 0


class ListBackend:
    """The model-library contract in pure Python; logits depend on the last 3 tokens and position."""

    def __init__(self, vocab_size):
        self.vocab = vocab_size
        self.metadata = {"vocab_size": vocab_size, "prefill_chunk_size": 16, "params": []}
        self.params = None
        v = vocab_size
        self._functions = {
            "embed": lambda t, p: ListTensor([float(x) for x in t.values], (len(t.values), 1)),
            "prefill": self._forward, "decode": self._forward,
            "create_tir_paged_kv_cache": lambda *a: Cache(),
            "argmax_logits": lambda l: ListTensor([max(range(v), key=lambda i: (l.values[i], -i))], (1,), "int32"),
            "softmax_with_temperature": self._softmax,
            "argsort_probs": self._argsort,
            "sample_with_top_p": self._sample,
            "apply_logit_bias_inplace": self._bias,
            "apply_penalty_inplace": self._penalty,
            "apply_bitmask_inplace": self._bitmask,
        }
        self._globals = {
            "vm.builtin.kv_state_begin_forward": lambda c, s, n: setattr(c, "pending", n[0]),
            "vm.builtin.kv_state_end_forward": lambda c: None,
            "vm.builtin.kv_state_add_sequence": lambda c, s: None,
            "vm.builtin.kv_state_clear": lambda c: c.tokens.clear(),
            "vm.builtin.kv_state_popn": lambda c, s, n: c.tokens.__delitem__(slice(len(c.tokens) - n, None)),
            "vm.builtin.attention_kv_cache_enable_sliding_window_for_seq": lambda *a: None,
        }

    def has_function(self, name): return name in self._functions
    def function(self, name): return self._functions[name]
    def global_function(self, name): return self._globals[name]
    def shape_tuple(self, values): return list(values)

    def upload(self, data, shape, dtype):
        fmt = {"float32": "f", "int32": "i"}[dtype]
        return ListTensor(list(struct.unpack(f"<{len(data) // 4}{fmt}", data)), shape, dtype)

    def write(self, tensor, data):
        fmt = {"float32": "f", "int32": "i"}[tensor.dtype]
        tensor.values[:] = struct.unpack(f"<{len(data) // 4}{fmt}", data)

    def download(self, tensor, nbytes=None):
        fmt = "i" if tensor.dtype == "int32" else "f"
        raw = struct.pack(f"<{len(tensor.values)}{fmt}", *tensor.values)
        return raw if nbytes is None else raw[:nbytes]

    def view(self, tensor, shape):
        return ListTensor(tensor.values, shape, tensor.dtype)

    def _forward(self, embedding, cache, params):
        cache.tokens.extend(int(x) for x in embedding.values)
        a, b, c = ([0, 0, 0] + cache.tokens)[-3:]
        n = len(cache.tokens)
        logits = [3.0 * math.sin(0.37 * j * (a + 1) + 0.11 * b * j + 0.7 * c + 0.05 * n) for j in range(self.vocab)]
        return (ListTensor([float(struct.unpack("<f", struct.pack("<f", x))[0]) for x in logits], (1, 1, self.vocab)),)

    def _softmax(self, logits, temperature):
        t = max(temperature.values[0], 1e-5)
        peak = max(logits.values)
        weights = [math.exp((x - peak) / t) for x in logits.values]
        total = sum(weights)
        return ListTensor([w / total for w in weights], logits.shape)

    def _argsort(self, probs):
        order = sorted(range(self.vocab), key=lambda i: (-probs.values[i], i))
        return ListTensor([probs.values[i] for i in order], probs.shape), ListTensor(order, probs.shape, "int32")

    def _sample(self, sorted_probs, sorted_ids, uniform, sample_indices, top_p):
        cumulative, running = [], 0.0
        for p in sorted_probs.values:
            running += p
            cumulative.append(running)
        cut = next((i for i, c in enumerate(cumulative) if c >= top_p.values[0]), self.vocab - 1)
        u = uniform.values[0]
        pick = next((i for i in range(cut + 1) if u < cumulative[i] / cumulative[cut]), cut)
        return ListTensor([sorted_ids.values[pick]], (1,), "int32")

    def _bias(self, logits, pos2seq, tokens, bias):
        for t, b in zip(tokens.values, bias.values):
            logits.values[t] += b

    def _penalty(self, logits, seq_ids, pos2seq, tokens, counts, penalties):
        presence, frequency, repetition = penalties.values
        for t, c in zip(tokens.values, counts.values):
            value = logits.values[t] - presence - c * frequency
            logits.values[t] = value * repetition if value < 0 else value / repetition

    def _bitmask(self, logits, seq_ids, bitmask):
        for i in range(self.vocab):
            if not (bitmask.values[i // 32] >> (i % 32)) & 1:
                logits.values[i] = -3.4028234663852886e38


class FolderLoader:
    def __init__(self, folder, vocab_size):
        self.folder, self.vocab_size = folder, vocab_size

    async def read_text(self, record, filename):
        try:
            return open(self.folder + "/" + filename, encoding="utf-8").read()
        except FileNotFoundError:
            return None

    async def load(self, record, chat_config, progress_callback):
        return ListBackend(self.vocab_size)


async def scenario(folder, vocab_size):
    engine = Engine(AppConfig([ModelRecord(model=folder, model_id="toy", model_lib="none")]),
                    loader=FolderLoader(folder, vocab_size))
    # the whole distribution when a request sets no temperature / top_p (not gen_config's 0.7 / 0.95)
    await engine.reload("toy", {"context_window_size": 4096, "temperature": 1.0, "top_p": 1.0})
    user = [{"role": "user", "content": "hello world"}]
    out = []
    r = await engine.chat.completions.create(messages=user, temperature=0, max_tokens=12, logprobs=True, top_logprobs=2)
    out.append([r.choices[0].message.content, r.choices[0].finish_reason, r.choices[0].logprobs, r.usage["completion_tokens"]])
    history = [*user, {"role": "assistant", "content": r.choices[0].message.content}, {"role": "user", "content": "more"}]
    r = await engine.chat.completions.create(messages=history, temperature=0.8, top_p=0.9, seed=4, max_tokens=16,
                                             frequency_penalty=0.5, presence_penalty=0.3, repetition_penalty=1.2,
                                             logit_bias={"40": 2.5}, n=2)
    out.append([[c.message.content for c in r.choices], r.usage["extra"]["prefill_tokens"], r.usage["prompt_tokens"]])
    r = await engine.completions.create(prompt="The quick", temperature=0, max_tokens=24, stop=["e", "an"])
    out.append([r.choices[0].text, r.choices[0].finish_reason])
    r = await engine.chat.completions.create(messages=user, seed=2, max_tokens=400, response_format={"type": "json_object"})
    out.append([r.choices[0].message.content, r.choices[0].finish_reason])
    json.loads(r.choices[0].message.content)
    schema = {"type": "object", "properties": {"n": {"type": "integer"}, "ok": {"type": "boolean"}}, "required": ["n", "ok"]}
    r = await engine.chat.completions.create(messages=user, seed=3, max_tokens=400, response_format={
        "type": "json_schema", "json_schema": {"name": "reply", "schema": schema}})
    out.append([r.choices[0].message.content, r.choices[0].finish_reason])
    assert sorted(json.loads(r.choices[0].message.content)) == ["n", "ok"]
    stream = await engine.chat.completions.create(messages=user, seed=5, max_tokens=20, stream=True,
                                                  stream_options={"include_usage": True})
    chunks = [c async for c in stream]
    out.append([[c["choices"][0]["delta"] if c["choices"] else c["usage"]["completion_tokens"] for c in chunks]])
    return json.dumps(out)
'''



def test_engine_runs_the_same_under_pyodide(tmp_path: Path) -> None:
    art = tiny_artifacts("smollm2")
    vocab = art.chat_config["vocab_size"]
    namespace: dict = {}
    exec(SCENARIO, namespace)  # noqa: S102 - the scenario is this file's own code
    import asyncio

    expected = asyncio.run(namespace["scenario"](str(art.model_dir), vocab))
    assert json.loads(expected)[3][1] == "stop" and json.loads(expected)[4][1] == "stop"
    version, payload = run_in_node_pyodide(SCENARIO + f"\nawait scenario('/model', {vocab})", tmp_path / "work",
                                           {"/model": art.model_dir})
    assert version.startswith("3.14")
    got, want = json.loads(payload), json.loads(expected)
    assert got[:3] == want[:3] and got[5] == want[5]
    assert got[3] == want[3]  # JSON mode
    assert got[4] == want[4]  # a JSON schema
