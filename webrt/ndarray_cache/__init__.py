"""MLC's tensor cache (CPython and Pyodide) and the browser's fetch-through cache of model files.

- `format`, `writer`: ``tensor-cache.json`` + ``params_shard_N.bin`` (read / write); every check
  of an index, its records and a library's parameters against it lives in `format`.
- `urls`: WebLLM's model-URL rule and the cache scope names; `verify`: size + md5 of a download;
  `integrity`: a ModelRecord's SRI hashes (WebLLM's ``integrity``); `fetch.FetchPolicy`: retries,
  backoff and the stall timeout of downloads.
- Pyodide only: `store` (Cache Storage / IndexedDB), `fetch` (verified streaming downloads, retried),
  `artifact_cache` (the one place weights, libraries and configs are fetched and cached: the
  index, parallel shard downloads, progress), `cache_helpers` (WebLLM's ``has_model_in_cache`` /
  ``delete_*_in_cache``).
"""
