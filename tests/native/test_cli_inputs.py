"""Bad compiler inputs are typed errors before any work: config.json fields of the wrong type or
out of range, broken GGUF metadata, output paths that cannot be written, window sizes out of
range; SIGTERM leaves no staging folder and a re-conversion leaves no stale shard."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from webrt.compiler import compile as compile_mod
from webrt.compiler import convert_weight as convert_mod
from webrt.compiler.compile import model_config_for, parse_overrides
from webrt.compiler.output import OutputPathError, check_output_dir, staged_output_dir
from webrt.errors import ModelConfigError, WebrtError
from webrt.chat_config import MAX_CONTEXT_WINDOW
from webrt.models.config import TransformerConfig

REPO = Path(__file__).resolve().parents[2]

BASE = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 320, "hidden_size": 64,
    "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
    "rms_norm_eps": 1e-5, "max_position_embeddings": 256, "rope_theta": 10000.0, "tie_word_embeddings": False,
}


# --- config.json ---------------------------------------------------------------------------------
@pytest.mark.parametrize("field, value", [
    ("hidden_size", "abc"), ("hidden_size", 64.7), ("hidden_size", True), ("hidden_size", -64),
    ("num_attention_heads", 0), ("num_attention_heads", 3), ("num_key_value_heads", 3), ("vocab_size", None),
    ("num_hidden_layers", 0), ("max_position_embeddings", 2**63), ("head_dim", 0),
    ("rope_scaling", "yarn"), ("rope_scaling", {"rope_type": "llama3", "factor": "x"}),
    ("rope_scaling", {"rope_type": ["llama3"]}), ("rope_parameters", [1]), ("rope_theta", "big"),
    ("rope_theta", float("nan")), ("rms_norm_eps", 0), ("tie_word_embeddings", "false"),
    ("sliding_window", -5), ("sliding_window", "4096"), ("model_type", ["llama"]), ("architectures", "Llama"),
    ("architectures", [{}]),
])
def test_config_json_nonsense_is_a_model_config_error_naming_field_and_value(field: str, value) -> None:
    d = {**BASE, field: value}
    if value is None:
        del d[field]
    with pytest.raises(ModelConfigError) as e:
        TransformerConfig.from_hf(d)
    text = str(e.value)
    assert field.split(".")[0] in text or field == "num_attention_heads", text
    if value is not None and field != "num_attention_heads" and not isinstance(value, dict):
        assert repr(value)[:10] in text or str(value) in text, text


def test_config_json_valid_values_unchanged() -> None:
    c = TransformerConfig.from_hf(BASE)
    assert (c.hidden_size, c.head_dim, c.num_key_value_heads, c.context_window_size) == (64, 16, 2, 256)
    assert TransformerConfig.from_hf({**BASE, "hidden_size": 64.0}).hidden_size == 64  # integral float: fine
    assert TransformerConfig.from_hf({**BASE, "sliding_window": None}).sliding_window_size == -1
    assert TransformerConfig.from_hf({**BASE, "sliding_window": 128}).sliding_window_size == 128
    assert TransformerConfig.from_hf({**BASE, "sliding_window": 128, "use_sliding_window": False}).sliding_window_size == -1
    assert TransformerConfig.from_dict(c.to_dict()) == c


def test_config_json_not_an_object() -> None:
    with pytest.raises(ModelConfigError):
        TransformerConfig.from_hf([BASE])  # type: ignore[arg-type]
    with pytest.raises(ModelConfigError):
        TransformerConfig.from_dict({**TransformerConfig.from_hf(BASE).to_dict(), "hidden_size": "64"})


# --- GGUF metadata -------------------------------------------------------------------------------
def _gguf(path: Path, **counts: int) -> Path:
    from gguf import GGUFWriter

    values = {"context_length": 256, "embedding_length": 64, "block_count": 1, "feed_forward_length": 128,
              "head_count": 4, "head_count_kv": 2, **counts}
    w = GGUFWriter(str(path), "llama")
    w.add_context_length(values["context_length"])
    w.add_embedding_length(values["embedding_length"])
    w.add_block_count(values["block_count"])
    w.add_feed_forward_length(values["feed_forward_length"])
    w.add_head_count(values["head_count"])
    w.add_head_count_kv(values["head_count_kv"])
    w.add_layer_norm_rms_eps(1e-5)
    w.add_tensor("token_embd.weight", np.zeros((32, 64), np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.mark.parametrize("key", ["head_count", "block_count", "embedding_length", "head_count_kv", "context_length"])
def test_gguf_zero_counts_are_model_config_errors(tmp_path: Path, key: str) -> None:
    from webrt.compiler.sources import open_source

    open_source(_gguf(tmp_path / "ok.gguf")).close()  # the valid file opens
    with pytest.raises(ModelConfigError, match=key.replace("_", ".") if key == "head_count" else key):
        open_source(_gguf(tmp_path / "bad.gguf", **{key: 0}))


@pytest.mark.parametrize("key", ["attention.layer_norm_rms_epsilon", "rope.freq_base", "attention.head_count"])
def test_gguf_metadata_of_the_wrong_type_is_a_model_config_error(tmp_path: Path, key: str) -> None:
    from gguf import GGUFReader, GGUFWriter

    from webrt.compiler.sources import open_source

    good = _gguf(tmp_path / "ok.gguf")
    w = GGUFWriter(str(tmp_path / "bad.gguf"), "llama")
    for name, field in GGUFReader(str(good)).fields.items():
        if name.startswith("llama.") and name != f"llama.{key}":
            value = field.contents()
            (w.add_float32 if isinstance(value, float) else w.add_uint32)(name, value)
    w.add_string(f"llama.{key}", "abc")
    w.add_tensor("token_embd.weight", np.zeros((32, 64), np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(ModelConfigError, match=key):
        open_source(tmp_path / "bad.gguf")


def test_gguf_block_count_zero_writes_nothing(tmp_path: Path) -> None:
    with pytest.raises(ModelConfigError, match="block_count"):
        convert_mod.convert_weight(_gguf(tmp_path / "bad.gguf", block_count=0), "q0f32", tmp_path / "out", False)
    assert not (tmp_path / "out").exists()


# --- output paths --------------------------------------------------------------------------------
def _no_source(*a, **k):
    raise AssertionError("the source was opened before the output was checked")


def test_output_that_is_a_file_fails_before_work(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(convert_mod, "open_source", _no_source)
    (tmp_path / "out").write_text("x")
    with pytest.raises(OutputPathError, match="not a folder"):
        convert_mod.convert_weight(tmp_path / "src", "q0f32", tmp_path / "out", False)
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputPathError, match="is a file"):
        convert_mod.convert_weight(tmp_path / "src", "q0f32", tmp_path / "file" / "sub" / "out", False)
    from webrt.compiler import gen_config as gen_mod

    monkeypatch.setattr(gen_mod, "open_source", _no_source)
    with pytest.raises(OutputPathError):
        gen_mod.gen_config(tmp_path / "src", "q0f32", "chatml", tmp_path / "out")


def test_read_only_output_is_a_typed_error(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(convert_mod, "open_source", _no_source)
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if Path(p) == tmp_path else real_access(p, mode))
    with pytest.raises(OutputPathError, match="not writable"):
        convert_mod.convert_weight(tmp_path / "src", "q0f32", tmp_path / "out", False)
    (tmp_path / "out").mkdir()
    monkeypatch.setattr(os, "access", lambda p, mode: False)
    with pytest.raises(OutputPathError, match="not writable"):
        check_output_dir(tmp_path / "out")


def test_staging_permission_error_is_typed(tmp_path: Path, monkeypatch) -> None:
    import tempfile

    def refuse(*a, **k):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(tempfile, "mkdtemp", refuse)
    with pytest.raises(OutputPathError, match="Permission denied"):
        with staged_output_dir(tmp_path / "out"):
            pass


def test_compile_output_checked_before_build(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(compile_mod, "load_chat_config", _no_source)
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputPathError, match="is a file"):
        compile_mod.compile_model(tmp_path / "cfg.json", "cpu", tmp_path / "file" / "lib.so")


def test_cli_output_error_is_one_line_and_nonzero(tmp_path: Path) -> None:
    (tmp_path / "out").write_text("x")
    r = subprocess.run([sys.executable, "-m", "webrt.cli", "convert_weight", str(tmp_path / "nowhere"),
                        "--quantization", "q0f32", "-o", str(tmp_path / "out")],
                       capture_output=True, text=True, timeout=120, cwd=REPO)
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "error:" in lines[0] and "choose another output path" in lines[0], r.stderr


# --- window sizes --------------------------------------------------------------------------------
def _chat_config(**fields) -> dict:
    model = TransformerConfig.from_hf(BASE).to_dict()
    return {"model_config": model, "context_window_size": 256, "sliding_window_size": -1,
            "prefill_chunk_size": 64, "attention_sink_size": -1, **fields}


@pytest.mark.parametrize("overrides", [
    "context_window_size=0", "context_window_size=-5", f"context_window_size={2**63}",
    f"context_window_size={MAX_CONTEXT_WINDOW + 1}", "prefill_chunk_size=0", "prefill_chunk_size=-3",
    "attention_sink_size=-100", "attention_sink_size=256", "sliding_window_size=-7",
    "sliding_window_size=64",  # both windows positive
])
def test_compile_overrides_out_of_range(overrides: str) -> None:
    key = overrides.split("=")[0]
    with pytest.raises(ModelConfigError, match=key):
        model_config_for(_chat_config(), parse_overrides(overrides))


def test_compile_overrides_in_range_unchanged() -> None:
    c = model_config_for(_chat_config(), parse_overrides(f"context_window_size={MAX_CONTEXT_WINDOW};prefill_chunk_size=16"))
    assert (c.context_window_size, c.prefill_chunk_size) == (MAX_CONTEXT_WINDOW, 16)
    c = model_config_for(_chat_config(), parse_overrides("prefill_chunk_size=4096"))
    assert c.prefill_chunk_size == 256  # clipped to the window, as before
    with pytest.raises(ModelConfigError, match="context_window_size"):
        model_config_for(_chat_config(context_window_size="256"), {})


@pytest.mark.parametrize("kwargs, name", [
    ({"context_window_size": 10**9}, "context_window_size"), ({"context_window_size": 0}, "context_window_size"),
    ({"prefill_chunk_size": 0}, "prefill_chunk_size"), ({"attention_sink_size": -100}, "attention_sink_size"),
    ({"context_window_size": 64, "attention_sink_size": 64}, "attention_sink_size"),
])
def test_gen_config_window_flags_out_of_range(hf_dir: Path, tmp_path: Path, kwargs: dict, name: str) -> None:
    from webrt.compiler.gen_config import gen_config

    with pytest.raises(ModelConfigError, match=name.replace("_", "[-_]")):
        gen_config(hf_dir, "q0f32", "chatml", tmp_path / "out", **kwargs)
    assert not (tmp_path / "out").exists()


def test_gen_config_huge_model_context_needs_a_flag(hf_dir: Path, tmp_path: Path, monkeypatch) -> None:
    from webrt.compiler import gen_config as gen_mod

    real = TransformerConfig.from_hf
    monkeypatch.setattr(gen_mod.TransformerConfig, "from_hf",
                        classmethod(lambda cls, d: real({**d, "max_position_embeddings": 2**30})))
    with pytest.raises(ModelConfigError, match="--context-window-size"):
        gen_mod.gen_config(hf_dir, "q0f32", "chatml", tmp_path / "out")


# --- staging: SIGTERM, stale shards --------------------------------------------------------------
def test_sigterm_removes_staging(tmp_path: Path) -> None:
    script = textwrap.dedent(f"""
        import sys, time
        from webrt.compiler.output import staged_output_dir
        with staged_output_dir({str(tmp_path / 'out')!r}) as staging:
            (staging / "params_shard_0.bin").write_bytes(b"x" * 1000)
            print("ready", flush=True)
            time.sleep(60)
    """)
    p = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, cwd=REPO)
    try:
        assert p.stdout.readline().strip() == "ready"
        assert [q.name for q in tmp_path.iterdir() if q.name.startswith(".out.staging-")]
        p.send_signal(signal.SIGTERM)
        assert p.wait(timeout=30) == 128 + signal.SIGTERM
    finally:
        if p.poll() is None:
            p.kill()
    assert list(tmp_path.iterdir()) == []


def test_reconversion_leaves_no_stale_shard(hf_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "model"
    out.mkdir()
    for i in range(40):  # an earlier, larger conversion
        (out / f"params_shard_{i}.bin").write_bytes(b"old")
    (out / "mlc-chat-config.json").write_text("{}")  # gen_config's: kept
    (out / "lib.so").write_text("lib")
    index = convert_mod.convert_weight(hf_dir, "q0f32", out, False)
    named = {s.data_path for s in index.shards}
    shards = {p.name for p in out.glob("params_shard_*.bin")}
    assert shards == named and len(named) < 40
    assert (out / "mlc-chat-config.json").read_text() == "{}" and (out / "lib.so").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_errors_are_webrt_errors() -> None:
    assert issubclass(OutputPathError, WebrtError) and issubclass(OutputPathError, OSError)


@pytest.mark.parametrize("text", ['{"vocab_size": ' + "1" * 5000 + "}", "[" * 100_000, "{"])
def test_chat_config_json_that_json_cannot_hold_is_a_model_config_error(tmp_path: Path, text: str) -> None:
    from webrt.compiler.gen_config import load_chat_config

    (tmp_path / "mlc-chat-config.json").write_text(text)
    with pytest.raises(ModelConfigError, match="not valid JSON"):
        load_chat_config(tmp_path)


def test_sigterm_during_convert_weight_leaves_nothing(hf_dir: Path, tmp_path: Path) -> None:
    """A real conversion, held after its first tensor, then SIGTERM: no staging folder, no output."""
    script = textwrap.dedent(f"""
        import time
        from webrt.compiler import convert_weight as cw
        real = cw.convert_params
        def slow(*args, **kwargs):
            for i, item in enumerate(real(*args, **kwargs)):
                yield item
                if i == 0:
                    print("ready", flush=True)
                    time.sleep(60)
        cw.convert_params = slow
        cw.convert_weight({str(hf_dir)!r}, "q0f32", {str(tmp_path / 'out')!r}, False)
    """)
    p = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, cwd=REPO)
    try:
        assert p.stdout.readline().strip() == "ready"
        p.send_signal(signal.SIGTERM)
        assert p.wait(timeout=60) == 128 + signal.SIGTERM
    finally:
        if p.poll() is None:
            p.kill()
    assert list(tmp_path.iterdir()) == []
