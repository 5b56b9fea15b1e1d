"""VLA-GSE as a PEFT tuner: importing this package registers it, then `peft.get_peft_model(model, GSEConfig())`."""

from ._peft_compat import register as _register
from .config import GSEConfig, GSEConfigError, rank_split
from .layer import GSELayer, GSELinear
from .model import GSEModel

PEFT_TYPE = _register(GSEConfig, GSEModel)

__all__ = ["GSEConfig", "GSEConfigError", "GSELayer", "GSELinear", "GSEModel", "PEFT_TYPE", "rank_split"]
