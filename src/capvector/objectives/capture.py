"""Capture a layer's hidden states with a forward hook, for models that cannot return them on request.

The tiny VLA returns its visual tokens' hidden state directly (`hidden_layer=`). Real VLAs (OpenVLA-OFT's
Llama, pi0's Gemma, Qwen-VL) are `transformers` models: hooking the decoder layer avoids materialising
every layer's hidden states (`output_hidden_states=True`) just to align one of them.

    with LayerCapture(model, "language_model.model.layers.23") as cap:
        out = model(**inputs)
    visual = cap.hidden[:, vision_start:vision_end]        # then SpatialAlignment(visual, targets)
"""

from __future__ import annotations

import torch
from torch import nn

from capvector.errors import CapvectorError


class LayerCapture:
    """Keeps the (first) tensor output of the named submodule from the latest forward pass, with its graph."""

    def __init__(self, model: nn.Module, module_name: str) -> None:
        modules = dict(model.named_modules())
        if module_name not in modules:
            near = [n for n in modules if n.endswith(module_name.rsplit(".", 1)[-1])][:5]
            raise CapvectorError(f"layer capture: no module named {module_name!r}; similar names: {near}")
        self.module_name = module_name
        self._module = modules[module_name]
        self._handle = None
        self.hidden: torch.Tensor | None = None

    def _hook(self, _module: nn.Module, _inputs: tuple, output: object) -> None:
        if isinstance(output, torch.Tensor):
            self.hidden = output
        elif isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
            self.hidden = output[0]
        elif hasattr(output, "last_hidden_state"):
            self.hidden = output.last_hidden_state
        else:
            raise CapvectorError(f"layer capture: {self.module_name!r} returned {type(output).__name__}, "
                                 "not a tensor or a tuple starting with one")

    def __enter__(self) -> LayerCapture:
        self._handle = self._module.register_forward_hook(self._hook)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None
