"""`webrt bench quality --browser`'s page side, run by Pyodide in the page (served as text, not
imported): the WebGPU library's next-token logits along a token sequence, one decode step per
token (what the engine runs), each returned as the float32 bytes read back from the GPU."""

import asyncio
import base64
import json

from webrt.chat_config import CHAT_CONFIG_FILE, window_config
from webrt.engine.config import ModelRecord
from webrt.engine.model_runner import ModelRunner
from webrt.wasm.loader import WebGPUModelLoader


async def _logits(opts):
    loader = WebGPUModelLoader(cache_backend="cache")
    record = ModelRecord(model=opts["model"], model_id="quality", model_lib=opts["wasm"])
    chat_config = json.loads(await loader.read_text(record, CHAT_CONFIG_FILE))
    backend = await loader.load(record, chat_config, None)
    runner = ModelRunner(backend, window_config(chat_config), int(chat_config.get("vocab_size") or 0))
    ids = opts["ids"]
    rows = [base64.b64encode(backend.download(runner.prefill(ids[:1]))).decode()]
    for token in ids[1:-1]:
        rows.append(base64.b64encode(backend.download(runner.decode(token))).decode())
    backend.close()
    return rows


async def webrt_quality_logits(opts_json):
    return await asyncio.create_task(_logits(json.loads(opts_json)))
