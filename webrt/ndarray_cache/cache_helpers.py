"""WebLLM's cache helpers, by the same names (Pyodide only).

    await has_model_in_cache("SmolLM2-135M-Instruct-q4f32_1", app_config)
    await delete_model_all_info_in_cache(model_id, app_config)   # all of the below
    await delete_model_in_cache(model_id, app_config)            # weights, index, tokenizer files
    await delete_chat_config_in_cache(model_id, app_config)      # mlc-chat-config.json
    await delete_model_wasm_in_cache(model_id, app_config)       # the .wasm (and its kernel list)

Files are looked up where the browser loader stores them: under the record's cleaned model
URL (`clean_model_url`) and library URL, in the scopes of ``app_config.cache_backend``.
"""

from __future__ import annotations

from typing import Any

from webrt.chat_config import CHAT_CONFIG_FILE, TOKENIZER_FILES
from webrt.ndarray_cache.artifact_cache import ArtifactCache
from webrt.ndarray_cache.format import INDEX_NAMES
from webrt.ndarray_cache.urls import absolute_url, clean_model_url, join_url


def model_base_url(record: Any, base: str | None = None) -> str:
    """The absolute folder URL of a ModelRecord's files (WebLLM's cleaned model URL)."""
    return clean_model_url(absolute_url(record.model, base))


def library_url(record: Any, base: str | None = None) -> str:
    """The absolute URL of a ModelRecord's library."""
    return absolute_url(record.model_lib, base)


def _record(model_id: str, app_config: Any) -> Any:
    from webrt.engine.config import AppConfig

    if not isinstance(app_config, AppConfig):
        app_config = AppConfig.from_dict(app_config)
    return app_config.find(model_id), app_config.cache_backend


async def has_model_in_cache(model_id: str, app_config: Any) -> bool:
    """Whether the weights of ``model_id`` (index and every shard) are in the cache."""
    record, backend = _record(model_id, app_config)
    cache = ArtifactCache(backend)
    base = model_base_url(record)
    index = await cache.cached_index(base)
    return index is not None and await cache.has_shards(base, index.shards)


async def delete_model_in_cache(model_id: str, app_config: Any) -> None:
    """Remove the weight shards, the tensor-cache index and the tokenizer files of ``model_id``."""
    record, backend = _record(model_id, app_config)
    cache = ArtifactCache(backend)
    base = model_base_url(record)
    index = await cache.cached_index(base)
    if index is not None:
        for shard in index.shards:
            await cache.model.delete(join_url(base, shard.data_path))
    for name in (*INDEX_NAMES, *TOKENIZER_FILES):
        await cache.model.delete(join_url(base, name))


async def delete_chat_config_in_cache(model_id: str, app_config: Any) -> None:
    """Remove ``mlc-chat-config.json`` of ``model_id``."""
    record, backend = _record(model_id, app_config)
    await ArtifactCache(backend).config.delete(join_url(model_base_url(record), CHAT_CONFIG_FILE))


async def delete_model_wasm_in_cache(model_id: str, app_config: Any) -> None:
    """Remove the model libraries of ``model_id`` (``model_lib``, and ``model_lib_cpu`` /
    ``model_lib_fallback`` if the record names them) and the kernel lists saved for the WebGPU ones."""
    record, backend = _record(model_id, app_config)
    cache = ArtifactCache(backend)
    url = library_url(record)
    await cache.wasm.delete(url)
    await cache.kernels.delete(url)
    if record.model_lib_cpu:
        await cache.wasm.delete(absolute_url(record.model_lib_cpu))
    if record.model_lib_fallback:
        fallback = absolute_url(record.model_lib_fallback)
        await cache.wasm.delete(fallback)
        await cache.kernels.delete(fallback)


async def delete_model_all_info_in_cache(model_id: str, app_config: Any) -> None:
    """Remove everything cached for ``model_id``: weights, tokenizer, config, library."""
    await delete_model_in_cache(model_id, app_config)
    await delete_chat_config_in_cache(model_id, app_config)
    await delete_model_wasm_in_cache(model_id, app_config)
