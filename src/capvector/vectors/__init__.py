"""Capability vectors: extract τ = θ_aux − θ_sft, merge θ_pre + λ·τ, inspect, export as LoRA."""

from capvector.vectors.extract import ExtractResult, extract
from capvector.vectors.format import CapabilityVector
from capvector.vectors.inspect import inspect, plot_layers
from capvector.vectors.merge import VectorWeight, load_weights_file, merge
from capvector.vectors.peft_export import export_peft_adapter

__all__ = [
    "CapabilityVector",
    "ExtractResult",
    "VectorWeight",
    "export_peft_adapter",
    "extract",
    "inspect",
    "load_weights_file",
    "merge",
    "plot_layers",
]
