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
import shutil
import subprocess
from pathlib import Path

import pytest

from test_engine_pyodide import PYODIDE, SCENARIO
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

NODE_SCRIPT = r"""
import { loadPyodide } from "%(pyodide)s";
import { readFileSync } from "node:fs";
const py = await loadPyodide();
py.unpackArchive(new Uint8Array(readFileSync("%(bundle)s")), "zip", { extractDir: "/bundle" });
for (const [dir, root] of [["/model", "%(model)s"], ["/work", "%(work)s"]]) {
  py.FS.mkdirTree(dir);
  py.FS.mount(py.FS.filesystems.NODEFS, { root }, dir);
}
try {
  await py.runPythonAsync(`
import sys
sys.path.insert(0, "/bundle")
exec(open("/work/scenario.py").read())
result = await template_scenario("/model", %(vocab)d)
print("RESULT " + sys.version.split()[0] + " " + result)
`);
} catch (error) {
  console.error(String(error.message).slice(-3000));
  process.exit(3);
}
"""


def test_chat_template_engine_runs_the_same_under_pyodide(tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    from webrt.tools.bundle import build_bundle

    node = shutil.which("node")
    if node is None or not PYODIDE.exists():
        pytest.skip("node or npm pyodide missing")
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
    work = tmp_path / "work"
    work.mkdir()
    (work / "scenario.py").write_text(source)
    (tmp_path / "bundle.zip").write_bytes(build_bundle())
    script = tmp_path / "run.mjs"
    script.write_text(NODE_SCRIPT % {"pyodide": PYODIDE.as_posix(), "bundle": (tmp_path / "bundle.zip").as_posix(),
                                     "model": art.model_dir.as_posix(), "work": work.as_posix(), "vocab": vocab})
    result = subprocess.run([node, str(script)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    line = next(x for x in result.stdout.splitlines() if x.startswith("RESULT "))
    _, version, payload = line.split(" ", 2)
    assert version.startswith("3.14")
    assert json.loads(payload) == json.loads(expected)
