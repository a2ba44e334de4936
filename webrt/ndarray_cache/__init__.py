"""MLC's tensor cache: the format (CPython and Pyodide) and, in the browser, fetching and caching it.

- `format`, `writer`: ``tensor-cache.json`` + ``params_shard_N.bin`` (read / write).
- `urls`: WebLLM's model-URL rule and the cache scope names; `verify`: size + md5 of a download.
- Pyodide only: `store` (Cache Storage / IndexedDB), `fetch` (verified streaming downloads),
  `artifact_cache` (fetch-through caches, parallel shard downloads, progress), `cache_helpers`
  (WebLLM's ``has_model_in_cache`` / ``delete_*_in_cache``).
"""
