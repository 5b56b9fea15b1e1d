"""Capability vectors: extract τ = θ_aux − θ_sft, merge θ_pre + λ·τ (or TIES/DARE), inspect, export as LoRA.

The operations live in their modules (``capvector.vectors.merge.merge`` and so on) and are not re-bound here, so
``capvector.vectors.merge`` stays the module (importable and patchable by its dotted path); the package root re-exports
the functions as ``capvector.extract``, ``capvector.merge`` and ``capvector.inspect``.
"""

from capvector.vectors.combine import Combine
from capvector.vectors.extract import ExtractResult
from capvector.vectors.format import CapabilityVector
from capvector.vectors.inspect import plot_layers
from capvector.vectors.merge import VectorWeight, load_weights_file
from capvector.vectors.peft_export import export_peft_adapter

__all__ = [
    "CapabilityVector",
    "Combine",
    "ExtractResult",
    "VectorWeight",
    "export_peft_adapter",
    "load_weights_file",
    "plot_layers",
]
