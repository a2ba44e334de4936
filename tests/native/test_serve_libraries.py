"""`webrt serve` reads each library's ``_metadata`` from the .wasm: the record's ``required_features``
are what the build needs (``subgroups`` for ``--subgroup-size 32``, which WebLLM must request), and a
library passed for the wrong field (a CPU library as ``model_lib``, a ``gpu`` variant as
``model_lib_fallback``) is refused at start-up, naming the build the field needs."""

from __future__ import annotations

import re
import shutil
from typing import Any

import pytest

from webrt.errors import ModelConfigError
from webrt.tools.serve import ServedModel

pytestmark = pytest.mark.skipif(shutil.which("emcc") is None, reason="emcc is not installed (builds .wasm)")


@pytest.fixture(scope="module")
def art() -> Any:
    import model_factory

    return model_factory.tiny_artifacts("llama2", "q4f32_1", devices=("wasm", "webgpu", "webgpu-gpu", "webgpu-sg32"))


def test_required_features_come_from_the_library(art: Any) -> None:
    assert ServedModel(art.model_dir, art.libs["webgpu-sg32"], "m").record()["required_features"] == ["subgroups"]
    assert ServedModel(art.model_dir, art.libs["webgpu-gpu"], "m").record()["required_features"] == []
    record = ServedModel(art.model_dir, art.libs["webgpu-gpu"], "m", model_lib_cpu=art.libs["wasm"],
                         model_lib_fallback=art.libs["webgpu"]).record()
    assert record["model_lib_cpu"].endswith("lib-wasm.wasm") and record["model_lib_fallback"].endswith("lib-webgpu.wasm")


@pytest.mark.parametrize("fields, says", [
    ({"model_lib": "wasm"}, "model_lib needs a `webrt compile ... --device webgpu` library"),
    ({"model_lib_cpu": "webgpu"}, "model_lib_cpu needs a `webrt compile ... --device wasm` library"),
    ({"model_lib_fallback": "webgpu-gpu"}, "--kernels fallback` library"),
    ({"model_lib_fallback": "wasm"}, "was compiled with `--device wasm`"),
])
def test_a_library_for_another_field_is_refused(art: Any, fields: dict[str, str], says: str) -> None:
    libs = {"model_lib": art.libs["webgpu-sg32"]}
    libs.update({field: art.libs[key] for field, key in fields.items()})
    model_lib = libs.pop("model_lib")
    with pytest.raises(ModelConfigError, match=re.escape(says)):
        ServedModel(art.model_dir, model_lib, "m", **libs)
