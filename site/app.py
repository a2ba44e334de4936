"""The chat demo's Python side, run by Pyodide in the page's module worker (see chat.js).

`chat.js` runs this file once, then calls ``await app.<method>(...)`` through ``runPython``.
Progress reports and streamed text go back as ``{"event": {...}}`` messages from the worker
(`emit`), which `boot.js` hands to the page's ``onEvent``. Engine work runs in asyncio tasks:
the WebGPU readbacks block with JSPI, which needs a task, not a bare JS->Python call.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import js
from pyodide.ffi import to_js

from webrt.engine import AppConfig, Engine
from webrt.wasm.loader import WebGPUModelLoader


def emit(kind: str, **data: Any) -> None:
    """Post an event to the page (the worker's ``postMessage``)."""
    js.postMessage(to_js({"event": {"type": kind, **data}}, dict_converter=js.Object.fromEntries))


class ChatApp:
    """One Engine over the served AppConfig; load, stream a reply, stop, reset."""

    def __init__(self) -> None:
        self.engine: Engine | None = None
        self.loader: WebGPUModelLoader | None = None
        self.config: AppConfig | None = None

    async def setup(self, app_config_url: str) -> list[str]:
        """Read the AppConfig the server publishes; the model ids."""
        data = json.loads(str(await (await js.fetch(app_config_url)).text()))
        self.config = AppConfig.from_dict(data)
        self.loader = WebGPUModelLoader(self.config)
        self.engine = Engine(self.config, loader=self.loader, init_progress_callback=self._progress)
        return [r.model_id for r in self.config.model_list]

    def _progress(self, report: Any) -> None:
        emit("progress", progress=report.progress, timeElapsed=report.time_elapsed, text=report.text)

    async def load(self, model_id: str) -> dict[str, Any]:
        """Load ``model_id``; what the load took (seconds, fetches, pipelines)."""
        assert self.engine is not None and self.loader is not None
        t0 = time.perf_counter()
        await asyncio.create_task(self.engine.reload(model_id))
        info = dict(self.loader.last_load)
        info["ready_s"] = time.perf_counter() - t0
        info["fetched_from_network"] = len(info.get("fetch", {}).get("network", []))
        info.pop("fetch", None)
        return info

    async def chat(self, messages_json: str, options_json: str = "{}") -> dict[str, Any]:
        """Stream a reply to ``messages`` (OpenAI format) as "delta" events; the whole reply."""
        return await asyncio.create_task(self._chat(json.loads(messages_json), json.loads(options_json)))

    async def _chat(self, messages: list[dict[str, Any]], options: dict[str, Any]) -> dict[str, Any]:
        assert self.engine is not None
        t0 = time.perf_counter()
        stream = await self.engine.chat.completions.create(
            messages=messages, stream=True, stream_options={"include_usage": True}, **options)
        text, finish, usage = [], None, None
        async for chunk in stream:
            if chunk.choices:
                delta = chunk.choices[0].delta.get("content") or ""
                if delta:
                    text.append(delta)
                    emit("delta", text=delta)
                finish = chunk.choices[0].finish_reason or finish
            if getattr(chunk, "usage", None):
                usage = chunk.usage
        stats = await self.engine.runtime_stats_text()
        emit("done", finish_reason=finish, stats=stats)
        return {"text": "".join(text), "finish_reason": finish, "stats": stats,
                "seconds": time.perf_counter() - t0,
                "usage": dict(usage) if usage else None}

    async def stop(self) -> None:
        if self.engine is not None:
            await self.engine.interrupt_generate()

    async def reset(self) -> None:
        if self.engine is not None and self.engine.loaded_model_ids:
            await self.engine.reset_chat()


app = ChatApp()
