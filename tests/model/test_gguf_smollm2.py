"""The real SmolLM2-135M-Instruct GGUF (Q4_1 matrices, a Q8_0 embedding, F32 norms) built with
gguf_f32: every matrix keeps its own type, and the CPU library scores the quality text
(``tests/data/quality_text.txt``, teacher-forced) within 0.5% of the perplexity transformers gets
from the same file."""

from __future__ import annotations

from pathlib import Path

from model_factory import smollm2_artifacts, smollm2_gguf
from webrt.tools.bench.quality import QualityModel, bench_quality

QUALITY_TEXT = Path(__file__).parents[1] / "data" / "quality_text.txt"


def test_gguf_f32_keeps_smollm2s_types_and_its_perplexity() -> None:
    art = smollm2_artifacts("gguf_f32")
    formats = art.chat_config["gguf_formats"]
    assert formats["model.embed_tokens"] == "Q8_0"
    assert set(formats.values()) == {"Q8_0", "Q4_1"}
    (row,) = bench_quality([QualityModel("SmolLM2 gguf_f32", art.model_dir, art.libs["cpu"])], smollm2_gguf(),
                           QUALITY_TEXT.read_text())
    assert abs(row["ppl_delta_pct"]) < 0.5, row
    assert row["mean_kl"] < 1e-3 and row["top1_agreement"] > 0.98, row
