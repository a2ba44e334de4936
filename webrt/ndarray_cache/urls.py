"""Where a model's files live: WebLLM's URL rules, and cache scope names. Pure Python.

WebLLM appends ``resolve/main/`` to a model URL unless it already names a revision
(``.../resolve/<rev>/``), so a Hugging Face repo URL and a local folder served as
``/models/<id>/resolve/main/`` both work. Cache keys are absolute URLs.
"""

from __future__ import annotations

import re

#: Cache scopes (Cache Storage cache names / IndexedDB database names), one per kind of file,
#: as WebLLM keeps "webllm/model", "webllm/config" and "webllm/wasm" apart.
MODEL_SCOPE = "webrt/model"  # tensor-cache index, weight shards, tokenizer files
CONFIG_SCOPE = "webrt/config"  # mlc-chat-config.json
WASM_SCOPE = "webrt/wasm"  # model libraries (.wasm)
KERNELS_SCOPE = "webrt/kernels"  # per library: the WebGPU kernels a model actually launched

_HAS_REVISION = re.compile(r".+/resolve/[^/]+/")


def clean_model_url(model: str) -> str:
    """The folder URL of a model's files: ``model`` + ``/`` + ``resolve/main/`` unless it has
    ``/resolve/<rev>/`` already (WebLLM's rule)."""
    url = model if model.endswith("/") else model + "/"
    if not _HAS_REVISION.match(url):
        url += "resolve/main/"
    return url


def join_url(base: str, name: str) -> str:
    """``name`` inside the folder URL ``base``."""
    return base + name if base.endswith("/") else f"{base}/{name}"


def absolute_url(url: str, base: str | None = None) -> str:
    """``url`` made absolute against ``base`` (default: the page's or worker's location).

    Cache entries are keyed by absolute URLs, so the same file is found whether a record gives
    ``/models/x/`` or ``http://host/models/x/``.
    """
    if base is None:
        import js  # Pyodide only

        base = str(js.location.href)
    return _urljoin(base, url)


def _urljoin(base: str, url: str) -> str:
    from urllib.parse import urljoin

    return urljoin(base, url)
