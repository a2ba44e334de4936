"""The browser loader and its cache, on the tiny model in headless Chromium (module worker).

One page (Cache Storage): a first load through the Engine downloads everything; after a page
reload (same profile) the second load fetches nothing (counted at the server), creates only the
kernels the model launched, is faster, and answers the same; a kernel list missing kernels still
works (they are created on first launch and the list grows back); the WebLLM-named cache helpers.

A second page (the tiny model's weights re-packed into 6 shards): a corrupted shard is rejected
with CacheIntegrityError and not stored; a download cut mid-shard stores the shards that
completed and nothing partial, and the next load fetches only what is missing; the IndexedDB
backend; f32-to-bf16 records against TVM's native loader; a record that requires shader-f16 fails
at reload with the typed error naming q4f32_1.
"""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path
from typing import Any

import pytest

import pyodide_util

pytestmark = pytest.mark.browser

MESSAGES = [{"role": "user", "content": "hello world"}]
MAX_TOKENS = 8
SHARD_CAP = 100_000

# Python run in the page after every (re)boot: an Engine per AppConfig, load + greedy chat.
PRELUDE = r"""
import asyncio, json, time
from webrt.engine import AppConfig, Engine
from webrt.errors import WebrtError
from webrt.wasm.loader import WebGPUModelLoader
from webrt.ndarray_cache import cache_helpers
from webrt.ndarray_cache.artifact_cache import ArtifactCache
from webrt.ndarray_cache.cache_helpers import library_url, model_base_url
from webrt.ndarray_cache.fetch import FetchPolicy

MODEL_LIST = %(model_list)s

def app_config(backend="cache"):
    return AppConfig.from_dict({"model_list": MODEL_LIST, "cache_backend": backend})

async def load_and_chat(model_id, backend="cache", chat=True, gpu=None):
    cfg = app_config(backend)
    events = []
    loader = WebGPUModelLoader(cfg, gpu=gpu, fetch_policy=FetchPolicy(backoff_s=0.05))  # quick retries
    engine = Engine(cfg, loader=loader, init_progress_callback=lambda r: events.append(
        {"progress": r.progress, "timeElapsed": r.time_elapsed, "text": r.text}))
    out = {"events": events}
    t0 = time.perf_counter()
    try:
        await engine.reload(model_id)
    except WebrtError as exc:
        out["error"] = [type(exc).__name__, str(exc)]
        out["last_load"] = loader.last_load
        out["fetched"] = loader.cache.stats.to_json()
        return out
    out["ready_s"] = time.perf_counter() - t0
    out["last_load"] = loader.last_load
    if chat:
        reply = await engine.chat.completions.create(messages=%(messages)s, temperature=0, max_tokens=%(max_tokens)d)
        out["text"] = reply.choices[0].message.content
        backend_ = engine.get_model().runner.backend
        out["saved_kernels"] = await backend_.saved()
        out["lazily"] = list(backend_.stats.kernels_created_lazily)
        out["gpu_errors"] = list(backend_.runtime.gpu.errors)
    globals()["last_loader"] = loader
    globals()["last_engine"] = engine
    return out

async def prefill_logits(tokens):
    runner = last_engine.get_model().runner
    runner.reset()
    return runner.logits_to_list(runner.prefill(tokens))

async def stored(model_id, backend="cache"):
    record = app_config(backend).find(model_id)
    cache = ArtifactCache(backend)
    base = model_base_url(record)
    def rel(urls, prefix):
        return sorted(u[len(prefix):] for u in urls if u.startswith(prefix))
    return {
        "model": rel(await cache.model.keys(), base),
        "config": rel(await cache.config.keys(), base),
        "wasm": [u == library_url(record) for u in await cache.wasm.keys()],
        "kernels": [u == library_url(record) for u in await cache.kernels.keys()],
        "has_model": await cache_helpers.has_model_in_cache(model_id, app_config(backend)),
    }
"""




def _prelude(model_list: list[dict[str, Any]]) -> str:
    return PRELUDE % {"model_list": json.dumps(model_list), "messages": json.dumps(MESSAGES),
                      "max_tokens": MAX_TOKENS}


def _call(page: pyodide_util.PyodidePage, expr: str, timeout_s: float = 240) -> Any:
    return page.run(f"await asyncio.create_task({expr})", timeout_s=timeout_s)


def _network(page: pyodide_util.PyodidePage, start: int, prefixes: tuple[str, ...] = ("/models/", "/libs/")
             ) -> list[str]:
    assert page.server is not None
    return [p for p in page.server.requests[start:] if p.startswith(prefixes)]


def native_text(art: Any, model_dir: Path | None = None) -> str:
    """The same greedy chat through the Engine natively (NativeModelLoader, CPU library)."""
    from webrt.engine import AppConfig, Engine

    async def main() -> str:
        folder = model_dir or art.model_dir
        cfg = AppConfig([{"model": str(folder), "model_id": "tiny", "model_lib": str(art.libs["cpu"])}])
        engine = Engine(cfg)
        await engine.reload("tiny")
        reply = await engine.chat.completions.create(messages=MESSAGES, temperature=0, max_tokens=MAX_TOKENS)
        return reply.choices[0].message.content

    return asyncio.run(main())


# --- page 1: Cache Storage, second load, kernel list, helpers -----------------------------------
@pytest.fixture(scope="module")
def cache_session() -> dict[str, Any]:
    art = pyodide_util.tiny_webgpu_artifacts()
    lib = art.libs["webgpu"]
    routes = {"/models/tiny/resolve/main/": art.model_dir, "/libs/": lib.parent}
    model_list = [{"model": "/models/tiny", "model_id": "tiny", "model_lib": f"/libs/{lib.name}"}]
    out: dict[str, Any] = {"native_text": native_text(art)}
    with pyodide_util.PyodidePage(routes, worker=True) as page:
        page.run(_prelude(model_list))
        n0 = len(page.server.requests)
        out["first"] = _call(page, "load_and_chat('tiny')")
        out["first"]["network"] = _network(page, n0)
        out["stored_after_first"] = _call(page, "stored('tiny')")

        page.reload()  # same profile: a fresh Pyodide and device, the caches persist
        page.run(_prelude(model_list))
        n0 = len(page.server.requests)
        out["second"] = _call(page, "load_and_chat('tiny')")
        out["second"]["network"] = _network(page, n0)

        # a kernel list that lacks kernels the model needs (e.g. written by an older library)
        page.reload()
        page.run(_prelude(model_list))
        full = out["second"]["saved_kernels"]
        out["partial_list"] = full[: len(full) // 3]
        page.run("cache = ArtifactCache('cache')\n"
                 f"await cache.save_launched_kernels(library_url(app_config().find('tiny')), {out['partial_list']!r}, 0)")
        out["partial"] = _call(page, "load_and_chat('tiny')")

        out["helpers"] = page.run(r"""
cfg = app_config()
steps = {}
steps["start"] = await stored("tiny")
await cache_helpers.delete_model_wasm_in_cache("tiny", cfg)
steps["no_wasm"] = await stored("tiny")
await cache_helpers.delete_chat_config_in_cache("tiny", cfg)
steps["no_config"] = await stored("tiny")
await cache_helpers.delete_model_in_cache("tiny", cfg)
steps["no_model"] = await stored("tiny")
steps
""", timeout_s=60)
        out["console"] = [m for m in page.console if m.startswith(("error", "pageerror"))]
    return out


def test_first_load_fetches_everything_into_the_cache(cache_session: dict[str, Any]) -> None:
    first = cache_session["first"]
    net = first["network"]
    assert "/models/tiny/resolve/main/params_shard_0.bin" in net
    assert "/models/tiny/resolve/main/tensor-cache.json" in net
    assert "/models/tiny/resolve/main/mlc-chat-config.json" in net
    assert any(p.startswith("/libs/") for p in net)
    assert len(net) == len(set(net))  # each file once
    stored = cache_session["stored_after_first"]
    assert stored["has_model"]
    assert {"params_shard_0.bin", "tensor-cache.json", "tokenizer.json"} <= set(stored["model"])
    assert stored["config"] == ["mlc-chat-config.json"]
    assert stored["wasm"] == [True] and stored["kernels"] == [True]
    assert first["last_load"]["kernel_list"] is False
    assert first["last_load"]["pipelines_n"] == first["last_load"]["kernels_total"]


def test_greedy_chat_matches_native(cache_session: dict[str, Any]) -> None:
    assert cache_session["first"]["text"] == cache_session["native_text"]
    assert cache_session["second"]["text"] == cache_session["native_text"]


def test_no_webgpu_errors(cache_session: dict[str, Any]) -> None:
    """Every kernel of the library compiles on this adapter; nothing reported an error."""
    assert cache_session["first"]["gpu_errors"] == [] and cache_session["console"] == []


def test_progress_reports_have_webllm_shape(cache_session: dict[str, Any]) -> None:
    for run in ("first", "second"):
        events = cache_session[run]["events"]
        assert events[-1]["progress"] == 1.0
        values = [e["progress"] for e in events]
        assert values == sorted(values) and 0.0 <= values[0]
        assert all(isinstance(e["text"], str) and e["timeElapsed"] >= 0 for e in events)
    texts = " ".join(e["text"] for e in cache_session["first"]["events"])
    assert "Fetching param cache[1/1]" in texts and "Loading GPU shader modules" in texts
    texts = " ".join(e["text"] for e in cache_session["second"]["events"])
    assert "Loading model from cache[1/1]" in texts


def test_second_load_fetches_nothing_and_is_faster(cache_session: dict[str, Any]) -> None:
    first, second = cache_session["first"], cache_session["second"]
    assert second["network"] == []
    assert second["last_load"]["fetch"]["network"] == []
    assert second["last_load"]["kernel_list"] is True
    assert second["last_load"]["pipelines_n"] == len(first["saved_kernels"]) < first["last_load"]["pipelines_n"]
    assert second["lazily"] == []  # the saved list covered every kernel the chat launched
    assert second["ready_s"] < first["ready_s"]
    print(f"\ntiny model, time to ready: first load {first['ready_s']:.2f} s "
          f"({first['last_load']['pipelines_n']} pipelines), second load {second['ready_s']:.2f} s "
          f"({second['last_load']['pipelines_n']} pipelines, nothing fetched): "
          f"{first['ready_s'] / second['ready_s']:.1f}x faster")


def test_a_kernel_missing_from_the_list_is_created_on_demand(cache_session: dict[str, Any]) -> None:
    partial = cache_session["partial"]
    assert partial["last_load"]["pipelines_n"] == len(cache_session["partial_list"])
    assert partial["text"] == cache_session["native_text"]
    full = set(cache_session["second"]["saved_kernels"])
    assert set(partial["lazily"]) == full - set(cache_session["partial_list"])
    assert set(partial["saved_kernels"]) == full  # the list grew back
    assert partial["gpu_errors"] == []


def test_cache_helpers_has_and_delete(cache_session: dict[str, Any]) -> None:
    steps = cache_session["helpers"]
    start = steps["start"]
    assert start["has_model"] and start["wasm"] == [True] and start["kernels"] == [True]
    assert steps["no_wasm"]["wasm"] == [] and steps["no_wasm"]["kernels"] == []
    assert steps["no_wasm"]["has_model"] and steps["no_wasm"]["config"] == ["mlc-chat-config.json"]
    assert steps["no_config"]["config"] == [] and steps["no_config"]["has_model"]
    assert steps["no_model"]["model"] == [] and not steps["no_model"]["has_model"]


# --- page 2: a 6-shard copy of the weights; faults, IndexedDB, shader-f16 ------------------------
def _reshard(model_dir: Path, out: Path) -> list[str]:
    """The tiny model's tensor cache re-packed into shards of at most SHARD_CAP bytes."""
    from webrt.ndarray_cache.format import TensorCacheIndex
    from webrt.ndarray_cache.writer import write_tensor_cache

    out.mkdir(parents=True, exist_ok=True)
    index = TensorCacheIndex.loads((model_dir / "tensor-cache.json").read_text())
    tensors = []
    for shard in index.shards:
        data = (model_dir / shard.data_path).read_bytes()
        for r in shard.records:
            tensors.append((r.name, r.shape, r.dtype, data[r.byte_offset:r.byte_offset + r.nbytes]))
    new = write_tensor_cache(out, tensors, shard_cap_bytes=SHARD_CAP)
    for name in ("mlc-chat-config.json", "tokenizer.json", "tokenizer_config.json"):
        shutil.copy(model_dir / name, out / name)
    return [s.data_path for s in new.shards]


BF16_PROMPT = [5, 17, 42, 100, 7, 250, 3]
LOGIT_ATOL = 2e-3  # as in test_browser_runtime: SwiftShader's sin/cos, far below a wrong weight


def native_prefill_logits(art: Any, model_dir: Path) -> list[float]:
    from webrt.engine.model_runner import ModelRunner, WindowConfig
    from webrt.native.backend import NativeBackend

    cfg = art.chat_config
    runner = ModelRunner(NativeBackend(model_dir, art.libs["cpu"]),
                         WindowConfig(cfg["context_window_size"], -1, -1, cfg["prefill_chunk_size"]))
    return runner.logits_to_list(runner.prefill(BF16_PROMPT))


def _bf16_copy(model_dir: Path, out: Path) -> None:
    """The tiny model with every float32 tensor stored as ``f32-to-bf16`` (upper 16 bits, rounded to
    nearest even): MLC's packed format, widened back to float32 on load."""
    import hashlib
    import struct

    from webrt.ndarray_cache.format import TensorCacheIndex

    out.mkdir(parents=True, exist_ok=True)
    index = TensorCacheIndex.loads((model_dir / "tensor-cache.json").read_text())
    blob, records = bytearray(), []
    for shard in index.shards:
        data = (model_dir / shard.data_path).read_bytes()
        for r in shard.records:
            raw = data[r.byte_offset:r.byte_offset + r.nbytes]
            rec = {"name": r.name, "shape": list(r.shape), "dtype": r.dtype, "byteOffset": len(blob)}
            if r.dtype == "float32":
                words = struct.unpack(f"<{len(raw) // 4}I", raw)
                halves = [((w + 0x7FFF + ((w >> 16) & 1)) >> 16) & 0xFFFF for w in words]
                raw = struct.pack(f"<{len(halves)}H", *halves)
                rec["format"] = "f32-to-bf16"
            else:
                rec["format"] = "raw"
            rec["nbytes"] = len(raw)
            blob += raw
            records.append(rec)
    (out / "params_shard_0.bin").write_bytes(blob)
    shard = {"dataPath": "params_shard_0.bin", "format": "raw-shard", "nbytes": len(blob),
             "md5sum": hashlib.md5(blob).hexdigest(), "records": records}
    (out / "tensor-cache.json").write_text(json.dumps({"metadata": index.metadata, "records": [shard]}))
    for name in ("mlc-chat-config.json", "tokenizer.json", "tokenizer_config.json"):
        shutil.copy(model_dir / name, out / name)


@pytest.fixture(scope="module")
def fault_session(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    art = pyodide_util.tiny_webgpu_artifacts()
    import model_factory

    f16 = model_factory.tiny_artifacts("llama2", "q4f16_1", devices=("webgpu",))
    lib = art.libs["webgpu"]
    sharded = tmp_path_factory.mktemp("sharded")
    shards = _reshard(art.model_dir, sharded)
    bf16 = tmp_path_factory.mktemp("bf16")
    _bf16_copy(art.model_dir, bf16)
    routes = {"/models/sharded/resolve/main/": sharded, "/libs/": lib.parent, "/models/bf16/resolve/main/": bf16,
              "/models/f16/resolve/main/": f16.model_dir, "/libs-f16/": f16.libs["webgpu"].parent}
    model_list = [
        {"model": "/models/sharded", "model_id": "sharded", "model_lib": f"/libs/{lib.name}"},
        {"model": "/models/bf16", "model_id": "bf16", "model_lib": f"/libs/{lib.name}"},
        {"model": "/models/f16", "model_id": "tiny-q4f16_1", "model_lib": f"/libs-f16/{f16.libs['webgpu'].name}",
         "required_features": ["shader-f16"]},
    ]
    base = "/models/sharded/resolve/main/"
    out: dict[str, Any] = {"shards": shards, "native_text": native_text(art),
                           "native_bf16_text": native_text(art, bf16),
                           "native_bf16_logits": native_prefill_logits(art, bf16),
                           "native_f32_logits": native_prefill_logits(art, art.model_dir)}
    with pyodide_util.PyodidePage(routes, worker=True) as page:
        server = page.server
        assert server is not None
        page.run(_prelude(model_list))

        corrupt, cut = shards[1], shards[4]
        server.faults[base + corrupt] = "corrupt"
        n0 = len(server.requests)
        out["corrupt"] = _call(page, "load_and_chat('sharded')")
        out["corrupt"]["network"] = _network(page, n0)
        out["corrupt"]["stored"] = _call(page, "stored('sharded')")
        del server.faults[base + corrupt]

        # from an empty cache again, so that several downloads run when one is cut
        page.run("await cache_helpers.delete_model_in_cache('sharded', app_config())")
        server.faults[base + cut] = "abort"
        n0 = len(server.requests)
        out["cut"] = _call(page, "load_and_chat('sharded')")
        out["cut"]["network"] = _network(page, n0)
        out["cut"]["stored"] = _call(page, "stored('sharded')")
        del server.faults[base + cut]

        n0 = len(server.requests)
        out["resume"] = _call(page, "load_and_chat('sharded')")
        out["resume"]["network"] = _network(page, n0)
        out["resume"]["stored"] = _call(page, "stored('sharded')")

        # IndexedDB: its own stores, so the first load downloads again; the second reads it all back
        n0 = len(server.requests)
        out["idb_first"] = _call(page, "load_and_chat('sharded', 'indexeddb', gpu=last_loader.gpu)")
        out["idb_first"]["network"] = _network(page, n0)
        n0 = len(server.requests)
        out["idb_second"] = _call(page, "load_and_chat('sharded', 'indexeddb', gpu=last_loader.gpu)")
        out["idb_second"]["network"] = _network(page, n0)
        out["idb_stored"] = _call(page, "stored('sharded', 'indexeddb')")

        out["bf16"] = _call(page, "load_and_chat('bf16', gpu=last_loader.gpu)")
        out["bf16"]["logits"] = _call(page, f"prefill_logits({BF16_PROMPT!r})")

        n0 = len(server.requests)
        out["f16"] = _call(page, "load_and_chat('tiny-q4f16_1', chat=False)")
        out["f16"]["network"] = _network(page, n0)
        out["console"] = [m for m in page.console if m.startswith("pageerror")]
    return out


def test_corrupted_shard_is_rejected_and_not_stored(fault_session: dict[str, Any]) -> None:
    run = fault_session["corrupt"]
    bad = fault_session["shards"][1]
    kind, message = run["error"]
    assert kind == "CacheIntegrityError"
    assert bad in message and "md5" in message and "not stored" in message and "convert_weight" in message
    assert bad not in run["stored"]["model"]
    assert not run["stored"]["has_model"]
    # whatever completed besides it was kept
    fetched = {p.rsplit("/", 1)[-1] for p in run["network"] if "params_shard" in p}
    stored = {n for n in run["stored"]["model"] if n.startswith("params_shard")}
    assert stored == fetched - {bad}


def test_interrupted_download_keeps_completed_shards_and_nothing_partial(fault_session: dict[str, Any]) -> None:
    run = fault_session["cut"]
    shards, cut = fault_session["shards"], fault_session["shards"][4]
    kind, message = run["error"]
    assert kind == "FetchError" and cut in message
    fetched = {p.rsplit("/", 1)[-1] for p in run["network"] if "params_shard" in p}
    stored = {n for n in run["stored"]["model"] if n.startswith("params_shard")}
    assert cut in fetched and cut not in stored
    assert stored == fetched - {cut}  # every shard that completed was stored, nothing partial
    assert len(fetched) >= 4 and len(stored) < len(shards)
    assert not run["stored"]["has_model"]


def test_the_next_load_fetches_only_the_missing_shards(fault_session: dict[str, Any]) -> None:
    run = fault_session["resume"]
    before = {n for n in fault_session["cut"]["stored"]["model"] if n.startswith("params_shard")}
    fetched = {p.rsplit("/", 1)[-1] for p in run["network"] if "params_shard" in p}
    assert fetched == set(fault_session["shards"]) - before
    assert run["stored"]["has_model"]
    assert run["text"] == fault_session["native_text"]


def test_indexeddb_backend(fault_session: dict[str, Any]) -> None:
    first, second = fault_session["idb_first"], fault_session["idb_second"]
    shard_urls = {p for p in first["network"] if "params_shard" in p}
    assert len(shard_urls) == len(fault_session["shards"])  # a separate store: downloaded again
    assert second["network"] == []
    assert first["text"] == second["text"] == fault_session["native_text"]
    stored = fault_session["idb_stored"]
    assert stored["has_model"] and stored["config"] == ["mlc-chat-config.json"] and stored["wasm"] == [True]


def test_shader_f16_record_fails_at_reload_naming_q4f32_1(fault_session: dict[str, Any]) -> None:
    run = fault_session["f16"]
    kind, message = run["error"]
    assert kind == "FeatureNotSupportedError"
    assert "shader-f16" in message and "q4f32_1" in message and "q4f16_1" in message
    # refused before the library or any weights were downloaded
    assert not [p for p in run["network"] if p.endswith(".wasm") or "params_shard" in p]
    assert fault_session["console"] == []


def test_f32_to_bf16_records_are_widened_like_tvms_native_loader(fault_session: dict[str, Any]) -> None:
    """Weights stored as f32-to-bf16 load through the cache (widened in wasm, not in Python) and give
    the same greedy reply as TVM's native tensor-cache loader on the same files."""
    assert fault_session["bf16"]["text"] == fault_session["native_bf16_text"]
    got, want, f32 = (fault_session["bf16"]["logits"], fault_session["native_bf16_logits"],
                      fault_session["native_f32_logits"])
    err = max(abs(a - b) for a, b in zip(got, want, strict=True))
    rounding = max(abs(a - b) for a, b in zip(want, f32, strict=True))
    print(f"\nbf16 weights: browser vs TVM native loader {err:.2g}; bf16 vs f32 weights {rounding:.2g}")
    assert err <= LOGIT_ATOL < rounding  # widened exactly as TVM does, and the rounding is visible
