"""The engine with a model's own chat template under Pyodide (Python 3.14, from the browser
bundle, which carries jinja2 + markupsafe): the same prompts, token for token, and the same
replies as under CPython.

The tiny chat-template model's files feed test_engine_pyodide's scenario (a pure-Python
stand-in for the model library, so both hosts compute the same logits) plus a prompt rendered
with tools and a template keyword; the CPython prompt is also checked against transformers.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from pyodide_util import run_in_node_pyodide
from test_engine_pyodide import SCENARIO
from test_model_chat_template import TOOLS, tiny_template_artifacts, tiny_template_hf

PROMPTS = r'''
async def template_scenario(folder, vocab_size):
    engine = Engine(AppConfig([ModelRecord(model=folder, model_id="toy", model_lib="none")]),
                    loader=FolderLoader(folder, vocab_size))
    await engine.reload("toy", {"context_window_size": 4096})
    model = engine.get_model()
    messages = [{"role": "user", "content": "hello"}, {"role": "assistant", "content": "the quick fox"},
                {"role": "user", "content": "and the lazy dog?"}]
    prompt = model.chat_prompt_tokens(messages, TOOLS, {"enable_thinking": False})
    assert model.chat_config.chat_template is not None
    return json.dumps([prompt, json.loads(await scenario(folder, vocab_size))])
'''


def test_chat_template_engine_runs_the_same_under_pyodide(tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    art = tiny_template_artifacts()
    vocab = art.chat_config["vocab_size"]
    source = SCENARIO + f"\nTOOLS = {TOOLS!r}\n" + PROMPTS
    namespace: dict = {}
    exec(source, namespace)  # noqa: S102 - the scenario is the tests' own code
    expected = asyncio.run(namespace["template_scenario"](str(art.model_dir), vocab))
    prompt = json.loads(expected)[0]
    reference = AutoTokenizer.from_pretrained(str(tiny_template_hf()), local_files_only=True)
    messages = [{"role": "user", "content": "hello"}, {"role": "assistant", "content": "the quick fox"},
                {"role": "user", "content": "and the lazy dog?"}]
    assert prompt == list(reference.apply_chat_template(messages, tools=TOOLS, enable_thinking=False,
                                                        add_generation_prompt=True, tokenize=True, return_dict=False))
    version, payload = run_in_node_pyodide(source + f"\nawait template_scenario('/model', {vocab})",
                                           tmp_path / "work", {"/model": art.model_dir})
    assert version.startswith("3.14")
    assert json.loads(payload) == json.loads(expected)
