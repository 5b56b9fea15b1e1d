"""GSEModel: the PEFT tuner that swaps target Linears for GSE layers and exposes aux loss and router stats."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from peft.tuners.tuners_utils import BaseTuner, BaseTunerLayer
from torch import nn

from capvector.errors import CapvectorError

from .config import GSEConfig, GSEConfigError
from .layer import GSELayer, GSELinear


class GSEModel(BaseTuner):
    """VLA-GSE through PEFT: `peft.get_peft_model(model, GSEConfig(...))`.

    Extra API (reachable from the PeftModel too, PEFT forwards unknown attributes):
    `gse_aux_loss()` (weighted load-balancing loss of the last forward, summed over layers; add it to
    the task loss), `gse_router_stats()` (per-layer expert load and router entropy) and
    `gse_trainable_report()` (trainable parameters by kind).
    """

    prefix: str = "gse_"
    tuner_layer_cls = GSELayer
    target_module_mapping: dict[str, list[str]] = {}

    def _create_and_replace(self, gse_config: GSEConfig, adapter_name: str, target: nn.Module, target_name: str,
                            parent: nn.Module, current_key: str, parameter_name: str | None = None,
                            **optional_kwargs: Any) -> None:
        if parameter_name is not None:
            raise GSEConfigError(f"GSEConfig.target_parameters: expected None, found {parameter_name!r}")
        if isinstance(target, GSELinear):
            target.update_layer(adapter_name, gse_config)
            return
        base = target.get_base_layer() if isinstance(target, BaseTunerLayer) else target
        if not isinstance(base, nn.Linear):
            raise GSEConfigError(f"GSEConfig.target_modules: expected torch.nn.Linear modules, found "
                                 f"{type(base).__name__} at {current_key!r}")
        if min(base.weight.shape) < gse_config.r:
            return  # too small for rank r: left frozen and unadapted, as the reference does
        new_module = GSELinear(target, adapter_name, gse_config)
        if adapter_name not in self.active_adapters:
            new_module.requires_grad_(False)
        self._replace_module(parent, target_name, new_module, target)

    def _post_injection_hook(self, model: nn.Module, config: GSEConfig, adapter_name: str) -> None:
        super()._post_injection_hook(model, config, adapter_name)
        if getattr(self, "_route_reset_hook", None) is None:
            # every top-level forward starts by forgetting the previous routing, so the aux loss and the
            # stats only cover layers that ran in the last forward (a skipped tower must not contribute)
            self._route_reset_hook = model.register_forward_pre_hook(self._forget_routes)

    def _forget_routes(self, module: nn.Module, args: Any) -> None:
        for _, layer in self._gse_layers():
            layer.forget_routing()

    def _cast_adapter_dtype(self, adapter_name: str, autocast_adapter_dtype: bool = True) -> None:
        """Adapter dtype as PEFT's LoRA: the base layer's float dtype, fp16/bf16 upcast to fp32 when autocasting.

        GSE builds its tensors in fp32 (the SVD) and casts them once here, so `autocast_adapter_dtype=False`
        on a bf16 base gives bf16 adapters, as it does for LoRA.
        """
        for _, layer in self._gse_layers():
            if adapter_name not in layer.gse_A:
                continue
            dtype = layer.get_base_layer().weight.dtype
            if not dtype.is_floating_point or (autocast_adapter_dtype and dtype.itemsize < 4):
                dtype = torch.float32
            layer.cast_adapter(adapter_name, dtype)
        super()._cast_adapter_dtype(adapter_name, autocast_adapter_dtype)

    @contextmanager
    def _enable_peft_forward_hooks(self, *args: Any, **kwargs: Any) -> Iterator[None]:
        """Refuse per-sample adapters (`adapter_names=` in forward): GSE does not implement mixed batches."""
        if kwargs.get("adapter_names") is not None:
            raise CapvectorError("GSE does not support mixed-adapter batches (adapter_names= in forward): "
                                 "run one forward per adapter with model.set_adapter(name)")
        if kwargs.get("alora_offsets") is not None:
            raise CapvectorError("GSE does not support alora_offsets (an activated-LoRA argument)")
        yield

    def _gse_layers(self) -> list[tuple[str, GSELayer]]:
        return [(name, m) for name, m in self.model.named_modules() if isinstance(m, GSELayer)]

    def gse_aux_loss(self, adapter_name: str | None = None) -> torch.Tensor:
        """aux_loss_weight · Σ_layers load-balancing loss of the last forward (a scalar with grad).

        Zero when there was no forward yet, the weight is 0, or adapters are disabled.
        """
        adapter = adapter_name or self.active_adapters[0]
        weight = float(self.peft_config[adapter].aux_loss_weight)
        total: torch.Tensor | None = None
        for _, layer in self._gse_layers():
            loss = layer.aux_loss(adapter)
            if loss is not None and not layer.disable_adapters:
                total = loss if total is None else total + loss.to(total.device)
        if total is None or weight == 0.0:
            device = next((p.device for p in self.model.parameters()), torch.device("cpu"))
            return torch.zeros((), device=device)
        return weight * total

    def gse_router_stats(self, adapter_name: str | None = None) -> dict[str, dict[str, Any]]:
        """Per adapted layer: `load` (share of top-k picks per specialized expert) and `entropy` (nats)."""
        adapter = adapter_name or self.active_adapters[0]
        out = {}
        for name, layer in self._gse_layers():
            stats = layer.router_stats(adapter)
            if stats is not None:
                out[name] = {"load": stats["load"].cpu().tolist(), "entropy": float(stats["entropy"])}
        return out

    def gse_trainable_report(self) -> dict[str, int]:
        """Trainable parameters by kind (factors, router) and the frozen total, for logs and the count check."""
        report = {"factors": 0, "router": 0, "other_trainable": 0, "frozen": 0}
        for name, p in self.model.named_parameters():
            if not p.requires_grad:
                report["frozen"] += p.numel()
            elif ".gse_router." in name:
                report["router"] += p.numel()
            elif ".gse_A." in name or ".gse_B." in name:
                report["factors"] += p.numel()
            else:
                report["other_trainable"] += p.numel()
        return report

    def merge_and_unload(self, progressbar: bool = False, safe_merge: bool = False,
                         adapter_names: list[str] | None = None) -> nn.Module:
        """Refused: the routed experts depend on the input, so no dense weight reproduces the model.

        Use `merge_adapter()` to fold the generalized experts only, or ship base + adapter.
        """
        raise CapvectorError("GSE cannot merge_and_unload: its routed (specialized) experts depend on the "
                             "input and have no dense equivalent. Use model.merge_adapter() to fold the "
                             "generalized experts into the base weights, or save the adapter with the base model.")

    def unload(self) -> nn.Module:
        """Remove the GSE layers and return the base model with its original weights (merges undone)."""
        for _, layer in self._gse_layers():
            layer.unmerge()
        if getattr(self, "_route_reset_hook", None) is not None:
            self._route_reset_hook.remove()
            self._route_reset_hook = None
        return self._unload_and_optionally_merge(merge=False)
