"""Hot-path operators used by the world model.

Every op has a plain PyTorch reference here (`reference.py`); fused Triton versions come later and
must match these references in the tests.
"""
from .reference import apply_rope, attention, modulate

__all__ = ["apply_rope", "attention", "modulate"]
