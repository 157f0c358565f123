"""qlib: the quantizers of the qlib study (GPTQ, AWQ, SmoothQuant, QAT on ResNet-18)."""
from .config import Config

__all__ = ["Config"]
