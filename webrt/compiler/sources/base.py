"""What every weight source offers: the HF config dict and tensors under HF names."""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import numpy as np


class WeightSource(ABC):
    """Tensors under HF names plus the HF config dict."""

    path: Path
    config: dict[str, Any]

    @abstractmethod
    def names(self) -> list[str]:
        """All tensor names, HF style."""

    @abstractmethod
    def get(self, name: str) -> np.ndarray:
        """One tensor as a numpy array (float tensors as float32/float16/bfloat16->float32)."""

    def close(self) -> None:
        """Release file handles."""
