"""capvector: capability vectors and VLA-GSE for Vision-Language-Action models."""

from capvector._version import __version__
from capvector.errors import CapvectorError
from capvector.selection import register_preset
from capvector.vectors import CapabilityVector, Combine, VectorWeight, export_peft_adapter
from capvector.vectors.extract import extract
from capvector.vectors.inspect import inspect
from capvector.vectors.merge import merge

__all__ = [
    "CapabilityVector",
    "CapvectorError",
    "Combine",
    "VectorWeight",
    "__version__",
    "export_peft_adapter",
    "extract",
    "inspect",
    "merge",
    "register_preset",
]
