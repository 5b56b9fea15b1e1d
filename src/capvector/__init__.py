"""capvector: capability vectors and VLA-GSE for Vision-Language-Action models."""

__version__ = "0.1.0"

from capvector.errors import CapvectorError  # noqa: E402
from capvector.selection import register_preset  # noqa: E402
from capvector.vectors import (  # noqa: E402
    CapabilityVector,
    VectorWeight,
    export_peft_adapter,
    extract,
    inspect,
    merge,
)

__all__ = [
    "CapabilityVector",
    "CapvectorError",
    "VectorWeight",
    "__version__",
    "export_peft_adapter",
    "extract",
    "inspect",
    "merge",
    "register_preset",
]
