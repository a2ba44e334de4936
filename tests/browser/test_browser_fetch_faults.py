"""Downloads under faults, in headless Chromium, against the fault-injecting test server.

One page (module worker), the tiny model re-packed into 6 shards. Each scenario starts from an
empty cache, injects faults at the server (`browser_util.StaticServer.inject`: dropped
connections, 5xx, stalls with and without headers, truncated or corrupted bodies, 404, HTML pages
where files belong), fetches through the product's `ArtifactCache` (as the loader does) or
`Engine.reload`, and checks what the server saw (requests per file), what the cache kept, and the
typed error. Short retry/backoff/stall settings (`POLICY`) keep the whole file to about a minute.

A real storage quota: Chromium's DevTools ``Storage.overrideQuotaForOrigin`` shrinks the page's
quota, so Cache Storage itself rejects the write with ``QuotaExceededError``.

Integrity: SRI hashes computed here with hashlib from the files on disk; a record with all of
them loads and chats as natively; a wrong hash for a shard, the library or the config is refused.
"""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any

import pytest

import pyodide_util
from test_browser_cache import _reshard, native_text

pytestmark = pytest.mark.browser

BASE = "/models/sharded/resolve/main/"
ATTEMPTS, STALL_S = 3, 1.0

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
POLICY = FetchPolicy(attempts=%(attempts)d, backoff_s=0.05, max_backoff_s=0.1, stall_timeout_s=%(stall)r)
GPU = None

def app_config(backend="cache"):
    return AppConfig.from_dict({"model_list": MODEL_LIST, "cache_backend": backend})

def failed(exc):
    return [type(exc).__name__, str(exc)]

async def stored(model_id, backend="cache"):
    record = app_config().find(model_id)
    cache = ArtifactCache(backend)
    base = model_base_url(record)
    files = {}
    for url in await cache.model.keys():
        if url.startswith(base):
            files[url[len(base):]] = int((await cache.model.get(url)).byteLength)
    return {"model": files,
            "config": [u[len(base):] for u in await cache.config.keys() if u.startswith(base)],
            "wasm": [u == library_url(record) for u in await cache.wasm.keys()]}

async def clear(model_id="sharded", backend="cache"):
    await cache_helpers.delete_model_all_info_in_cache(model_id, app_config(backend))

async def weights(model_id="sharded", backend="cache"):
    # the index and every shard through the cache, as the loader fetches them (no GPU)
    record = app_config().find(model_id)
    cache = ArtifactCache(backend, 4, POLICY)
    base = model_base_url(record)
    out = {}
    t0 = time.perf_counter()
    try:
        index = await cache.fetch_index(base, record.integrity)
        async for shard, data in cache.iter_shards(base, index.shards, None, record.integrity):
            pass
        out["ok"] = True
    except WebrtError as exc:
        out["error"] = failed(exc)
    out["s"] = time.perf_counter() - t0
    out["network"] = cache.stats.network
    out["stored"] = await stored(model_id, backend)
    return out

async def small_file(kind, name="", model_id="sharded"):
    record = app_config().find(model_id)
    cache = ArtifactCache("cache", 4, POLICY)
    out = {}
    try:
        if kind == "library":
            await cache.fetch_library(library_url(record), record.integrity)
        else:
            store = cache.config if kind == "config" else cache.model
            await cache.fetch_text(store, model_base_url(record) + name, integrity=record.integrity)
        out["ok"] = True
    except WebrtError as exc:
        out["error"] = failed(exc)
    out["stored"] = await stored(model_id)
    return out

async def reload(model_id, chat=False):
    global GPU
    cfg = app_config()
    loader = WebGPUModelLoader(cfg, gpu=GPU, fetch_policy=POLICY)
    engine = Engine(cfg, loader=loader)
    out = {}
    try:
        await engine.reload(model_id)
        out["ok"] = True
        if chat:
            reply = await engine.chat.completions.create(messages=%(messages)s, temperature=0, max_tokens=%(max_tokens)d)
            out["text"] = reply.choices[0].message.content
    except WebrtError as exc:
        out["error"] = failed(exc)
    GPU = loader.gpu or GPU
    out["stored"] = await stored(model_id)
    return out
"""


def sri(data: bytes) -> str:
    return "sha256-" + base64.b64encode(hashlib.sha256(data).digest()).decode()


def _call(page: pyodide_util.PyodidePage, expr: str, timeout_s: float = 120) -> Any:
    return page.run(f"await asyncio.create_task({expr})", timeout_s=timeout_s)


def _counts(server: Any, start: int) -> dict[str, int]:
    """Requests per file name under BASE (and the libraries), from request number `start` on."""
    out: dict[str, int] = {}
    for path in server.requests[start:]:
        if path.startswith((BASE, "/libs/")):
            name = path.rsplit("/", 1)[-1]
            out[name] = out.get(name, 0) + 1
    return out


@pytest.fixture(scope="module")
def faults(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    from test_browser_cache import MAX_TOKENS, MESSAGES

    art = pyodide_util.tiny_webgpu_artifacts()
    lib = art.libs["webgpu"]
    folder = tmp_path_factory.mktemp("sharded")
    shards = _reshard(art.model_dir, folder)
    files = {p.name: p.read_bytes() for p in folder.iterdir()}
    good = {"config": sri(files["mlc-chat-config.json"]), "model_lib": sri(lib.read_bytes()),
            "tokenizer": {n: sri(files[n]) for n in ("tokenizer.json", "tokenizer_config.json")},
            "tensor_cache": sri(files["tensor-cache.json"]), "shards": {s: sri(files[s]) for s in shards}}
    wrong = sri(b"some other bytes")
    record = {"model": "/models/sharded", "model_lib": f"/libs/{lib.name}"}
    model_list = [
        {**record, "model_id": "sharded"},
        {**record, "model_id": "sri", "integrity": good},
        {**record, "model_id": "bad-shard", "integrity": {**good, "shards": {**good["shards"], shards[2]: wrong}}},
        {**record, "model_id": "bad-lib", "integrity": {**good, "model_lib": wrong}},
        {**record, "model_id": "bad-config", "integrity": {**good, "config": wrong}},
    ]
    routes = {BASE: folder, "/libs/": lib.parent}
    out: dict[str, Any] = {"shards": shards, "sizes": {s: len(files[s]) for s in shards},
                           "native_text": native_text(art)}
    with pyodide_util.PyodidePage(routes, worker=True) as page:
        server = page.server
        assert server is not None
        page.run(PRELUDE % {"model_list": json.dumps(model_list), "attempts": ATTEMPTS, "stall": STALL_S,
                            "messages": json.dumps(MESSAGES), "max_tokens": MAX_TOKENS})

        def run(key: str, expr: str, inject: dict[str, str | tuple[str, int]]) -> None:
            _call(page, "clear()")
            server.clear_faults()
            for name, fault in inject.items():
                kind, times = fault if isinstance(fault, tuple) else (fault, None)
                server.inject(name if name.startswith("/") else BASE + name, kind, times)
            n0 = len(server.requests)
            out[key] = _call(page, expr)
            out[key]["requests"] = _counts(server, n0)
            server.clear_faults()

        # integrity: every hash right -> loads and chats; then each kind of wrong hash
        run("sri_ok", "reload('sri', chat=True)", {})
        out["sri_ok"]["integrity"] = page.run("app_config().find('sri').integrity.to_json()")
        out["good_integrity"] = good
        run("sri_shard", "weights('bad-shard')", {})
        run("sri_lib", "reload('bad-lib')", {})
        _call(page, "reload('sharded')")  # the config is cached now; a record with another hash must not use it
        n0 = len(server.requests)
        out["sri_config"] = _call(page, "reload('bad-config')")
        out["sri_config"]["requests"] = _counts(server, n0)

        # transient faults, each once: every shard arrives, the faulty ones fetched twice
        run("transient", "weights()", {shards[0]: ("corrupt", 1), shards[1]: ("stall_body", 1),
                                        shards[2]: ("abort", 1), shards[3]: ("stall", 1), shards[4]: ("500", 1),
                                        shards[5]: ("truncate", 1), "tensor-cache.json": ("503", 1)})
        # persistent faults: typed errors, bounded tries, nothing partial kept
        run("drop", "weights()", {shards[2]: "abort"})
        run("stall_body", "weights()", {shards[1]: "stall_body"})
        run("stall", "weights()", {shards[3]: "stall"})
        run("truncate", "weights()", {shards[5]: "truncate"})
        n0 = len(server.requests)
        out["resume"] = _call(page, "weights()")  # no faults now: only the missing shard is fetched
        out["resume"]["requests"] = _counts(server, n0)
        run("corrupt", "weights()", {shards[0]: "corrupt"})
        run("missing", "weights()", {shards[1]: "404"})
        # an HTML page instead of the file: a shard, the index, the library, the config (through reload)
        run("html_shard", "weights()", {shards[4]: "html"})
        run("html_index", "weights()", {"tensor-cache.json": "html"})
        run("html_lib", "small_file('library')", {f"/libs/{lib.name}": "html"})
        run("html_config", "reload('sharded')", {"mlc-chat-config.json": "html"})

        # a real quota: Chromium's quota for this origin set to what it uses now + 250 kB
        cdp = page.browser.page.context.new_cdp_session(page.browser.page)
        for backend in ("cache", "indexeddb"):
            _call(page, f"clear(backend={backend!r})")
            usage = int(cdp.send("Storage.getUsageAndQuota", {"origin": server.base_url})["usage"])
            cdp.send("Storage.overrideQuotaForOrigin", {"origin": server.base_url, "quotaSize": usage + 250_000})
            n0 = len(server.requests)
            out[f"quota_{backend}"] = _call(page, f"weights(backend={backend!r})")
            out[f"quota_{backend}"]["requests"] = _counts(server, n0)
            cdp.send("Storage.overrideQuotaForOrigin", {"origin": server.base_url})  # back to the default
            n0 = len(server.requests)
            out[f"quota_resume_{backend}"] = _call(page, f"weights(backend={backend!r})")
            out[f"quota_resume_{backend}"]["requests"] = _counts(server, n0)
        out["console"] = [m for m in page.console if m.startswith("pageerror")]
    return out


def _shards_stored(run: dict[str, Any]) -> dict[str, int]:
    return {n: size for n, size in run["stored"]["model"].items() if n.startswith("params_shard")}


def _assert_kept_only_whole_shards(run: dict[str, Any], faults: dict[str, Any], bad: str) -> None:
    stored = _shards_stored(run)
    assert bad not in stored
    assert all(size == faults["sizes"][n] for n, size in stored.items())  # nothing partial


def test_transient_faults_are_retried_and_the_load_completes(faults: dict[str, Any]) -> None:
    """A corrupted, stalled (after headers, and before any), cut, 500, truncated shard and a 503
    index, each once: every file arrives, each faulty one fetched exactly twice, the others once."""
    run, shards = faults["transient"], faults["shards"]
    assert run.get("ok"), run.get("error")
    assert _shards_stored(run) == faults["sizes"]
    assert run["requests"] == {**{s: 2 for s in shards}, "tensor-cache.json": 2}
    assert run["s"] < 2 * STALL_S + 5  # the two stalls were cut at the stall timeout, in parallel
    assert faults["console"] == []  # aborted requests leave no unhandled errors in the page


@pytest.mark.parametrize("case, bad, fault_words", [
    ("drop", 2, "transfer was cut"),
    ("stall_body", 1, "no more bytes after the first"),
    ("stall", 3, "no response within"),
])
def test_persistent_transient_faults_give_up_after_the_tries(faults: dict[str, Any], case: str, bad: int,
                                                             fault_words: str) -> None:
    run, name = faults[case], faults["shards"][bad]
    kind, message = run["error"]
    assert kind == "FetchError"
    assert name in message and f"{BASE}{name}" in message and fault_words in message
    assert f"({ATTEMPTS} tries)" in message and "Nothing of it was stored" in message
    assert run["requests"][name] == ATTEMPTS
    _assert_kept_only_whole_shards(run, faults, name)
    assert run["s"] < ATTEMPTS * (STALL_S + 1) + 5  # every wait bounded


def _assert_repeated_mismatch(faults: dict[str, Any], case: str, bad: int, words: str) -> None:
    """A short or corrupted body is fetched once more; the same mismatch again is the server's
    file: CacheIntegrityError naming the file and URL, nothing of it stored."""
    run, name = faults[case], faults["shards"][bad]
    kind, message = run["error"]
    assert kind == "CacheIntegrityError"
    assert name in message and f"{BASE}{name}" in message and words in message and "not stored" in message
    assert run["requests"][name] == 2
    _assert_kept_only_whole_shards(run, faults, name)


def test_a_corrupted_shard_is_fetched_twice_then_refused(faults: dict[str, Any]) -> None:
    _assert_repeated_mismatch(faults, "corrupt", 0, "md5")


def test_a_truncated_shard_is_fetched_twice_then_refused_and_the_next_attempt_resumes(faults: dict[str, Any]) -> None:
    _assert_repeated_mismatch(faults, "truncate", 5, "bytes but its index records")
    before = set(_shards_stored(faults["truncate"]))
    run = faults["resume"]
    assert run.get("ok"), run.get("error")
    fetched = {n for n in run["requests"] if n.startswith("params_shard")}
    assert fetched == set(faults["shards"]) - before and len(before) >= 3  # the verified shards are kept
    assert _shards_stored(run) == faults["sizes"]


def test_404_is_not_retried(faults: dict[str, Any]) -> None:
    run, name = faults["missing"], faults["shards"][1]
    kind, message = run["error"]
    assert kind == "FetchError" and "HTTP 404" in message and name in message and f"{BASE}{name}" in message
    assert "ModelRecord" in message
    assert run["requests"][name] == 1
    _assert_kept_only_whole_shards(run, faults, name)


@pytest.mark.parametrize("case, name", [("html_shard", None), ("html_index", "tensor-cache.json"),
                                        ("html_lib", "lib"), ("html_config", "mlc-chat-config.json")])
def test_an_html_page_instead_of_the_file_is_refused_and_not_stored(faults: dict[str, Any], case: str,
                                                                    name: str | None) -> None:
    run = faults[case]
    name = faults["shards"][4] if name is None else name
    kind, message = run["error"]
    assert kind == "FetchError" and "HTML page instead of" in message and "captive portal" in message
    requested = [n for n in run["requests"] if name in n or (name == "lib" and n.endswith(".wasm"))]
    assert len(requested) == 1 and run["requests"][requested[0]] == 1  # not retried
    assert requested[0] in message
    stored = run["stored"]
    assert requested[0] not in stored["model"] and stored["config"] == [] and stored["wasm"] == []


@pytest.mark.parametrize("backend, other", [("cache", "indexeddb"), ("indexeddb", "cache")])
def test_a_full_quota_names_the_space_needed_and_the_ways_out(faults: dict[str, Any], backend: str,
                                                              other: str) -> None:
    run = faults[f"quota_{backend}"]
    kind, message = run["error"]
    assert kind == "StorageQuotaError"
    total = sum(faults["sizes"].values())
    assert f"the weights of this model need {total / 2**20:.1f} MB" in message and "are cached" in message
    assert "delete_model_all_info_in_cache" in message and f"cache_backend={other!r}" in message
    stored = _shards_stored(run)
    assert len(stored) < len(faults["shards"])
    assert all(size == faults["sizes"][n] for n, size in stored.items())  # nothing partial
    resume = faults[f"quota_resume_{backend}"]
    assert resume.get("ok"), resume.get("error")
    assert {n for n in resume["requests"] if n.startswith("params_shard")} == set(faults["shards"]) - set(stored)


def test_a_record_with_integrity_hashes_loads_and_chats(faults: dict[str, Any]) -> None:
    run = faults["sri_ok"]
    assert run["integrity"] == {**faults["good_integrity"], "onFailure": "error"}  # kept, WebLLM's shape
    assert run.get("ok"), run.get("error")
    assert run["text"] == faults["native_text"]


@pytest.mark.parametrize("case, name", [("sri_shard", "shard"), ("sri_lib", ".wasm"),
                                        ("sri_config", "mlc-chat-config.json")])
def test_a_wrong_integrity_hash_is_refused_and_nothing_stored(faults: dict[str, Any], case: str, name: str) -> None:
    run = faults[case]
    bad = faults["shards"][2] if name == "shard" else next(n for n in run["requests"] if n.endswith(name))
    kind, message = run["error"]
    assert kind == "IntegrityError"
    assert bad in message and "integrity hash" in message and "not stored" in message
    assert run["requests"][bad] == 2  # fetched once more, the same mismatch: the server's file
    stored = run["stored"]
    if name == "shard":
        _assert_kept_only_whole_shards(run, faults, bad)
    elif name == ".wasm":
        assert stored["wasm"] == []
    else:
        assert stored["config"] == []  # the cached copy (another record's) was dropped, not used
