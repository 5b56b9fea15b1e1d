"""capvector: capability vectors and VLA-GSE for Vision-Language-Action models."""

__version__ = "0.1.0"
