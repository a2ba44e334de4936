"""Read model weights and configs from a Hugging Face folder or a GGUF file.

A source exposes the HF-style config dict and float tensors under their Hugging Face names
(``model.layers.0.self_attn.q_proj.weight``), whatever the file format (:mod:`.hf`,
:mod:`.gguf`), so both kinds of source feed the same converter.
"""

from __future__ import annotations

from pathlib import Path

from webrt.compiler.sources.base import WeightSource
from webrt.compiler.sources.gguf import GGUFSource
from webrt.compiler.sources.hf import HFSource
from webrt.errors import WeightFileError

__all__ = ["GGUFSource", "HFSource", "WeightSource", "open_source"]


def open_source(path: str | Path) -> WeightSource:
    """Open a HF model folder (safetensors or PyTorch .bin) or a ``.gguf`` file."""
    p = Path(path)
    if not p.exists():
        raise WeightFileError(f"{p} does not exist; pass a Hugging Face model folder or a .gguf file.")
    if p.is_file():
        if p.suffix == ".gguf":
            return GGUFSource(p)
        raise WeightFileError(f"{p} is a file but not a .gguf; pass the model folder that holds config.json instead.")
    return HFSource(p)
