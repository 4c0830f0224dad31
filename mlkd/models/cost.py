"""What a model costs: parameters and multiply-adds (MACs) of its backbone and of its head.

MACs are counted by torch's `FlopCounterMode` on the inference path (``forward_logits``) for one image
at the given resolution, as FLOPs / 2. Like every such count they cover the matrix products and
convolutions (and attention), not element-wise operations (normalisation, activations).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Callable

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from mlkd.models.model import MultiLabelModel


@dataclass(frozen=True)
class ModelCost:
    """Parameters and multiply-adds per image of a model's backbone and label-wise head.

    Attributes:
        img_size: the input resolution the MACs were counted at (``img_size × img_size``).
        backbone_params, head_params: parameters (trainable and frozen) of each part.
        backbone_macs, head_macs: multiply-adds of one image ``[1, C, img_size, img_size]`` through each part.
    """

    img_size: int
    backbone_params: int
    head_params: int
    backbone_macs: int
    head_macs: int

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


def _cpu_sdpa_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    """FLOPs of the CPU kernel of `scaled_dot_product_attention` (torch registers only the GPU ones)."""
    return sdpa_flop_count(query_shape, key_shape, value_shape)


# Kernels torch's counter does not know, each with its formula.
_EXTRA_FORMULAS = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_sdpa_flops}


def count_macs(fn: Callable[..., Any], *inputs: Any) -> int:
    """Multiply-adds of ``fn(*inputs)``: FLOPs counted by `FlopCounterMode`, halved.

    Runs ``fn`` once without gradients.
    """
    with torch.no_grad(), FlopCounterMode(display=False, custom_mapping=_EXTRA_FORMULAS) as counter:
        fn(*inputs)
    return counter.get_total_flops() // 2


def count_parameters(module: nn.Module) -> int:
    """All parameters of ``module``, trainable or frozen."""
    return sum(p.numel() for p in module.parameters())


def model_cost(model: nn.Module, img_size: int) -> ModelCost:
    """Parameters and MACs of ``model``'s backbone and head for one ``img_size × img_size`` image.

    The head's MACs are those of the whole inference path minus the backbone's. The model runs in eval
    mode on its own device and is left in the mode it was in. A model that is not a `MultiLabelModel`
    (a teacher trained elsewhere, `mlkd.models.external.ExternalTeacher`, or one with a fitted head) is
    counted whole as the backbone: its ``forward_logits`` when it has one, else its ``forward``.
    """
    param = next(model.parameters(), None)
    x = torch.zeros(1, getattr(model, "in_chans", 3), img_size, img_size,
                    device=param.device if param is not None else "cpu")
    was_training = model.training
    model.eval()
    try:
        if not isinstance(model, MultiLabelModel):
            macs = count_macs(getattr(model, "forward_logits", model.forward), x)
            inner, head = getattr(model, "teacher", None), getattr(model, "head", None)
            if isinstance(inner, nn.Module) and isinstance(head, nn.Module):
                # A teacher with a fitted head (mlkd.models.fitted_head): the head apart, as for mlkd's models.
                inner_macs = count_macs(getattr(inner, "forward_logits", inner.forward), x)
                return ModelCost(img_size=int(img_size), backbone_params=count_parameters(inner),
                                 head_params=count_parameters(head), backbone_macs=inner_macs,
                                 head_macs=max(macs - inner_macs, 0))
            return ModelCost(img_size=int(img_size), backbone_params=count_parameters(model), head_params=0,
                             backbone_macs=macs, head_macs=0)
        backbone_macs = count_macs(model.backbone.forward_features, x)
        total_macs = count_macs(model.forward_logits, x)
    finally:
        model.train(was_training)
    return ModelCost(img_size=int(img_size), backbone_params=count_parameters(model.backbone),
                     head_params=count_parameters(model.head), backbone_macs=backbone_macs,
                     head_macs=total_macs - backbone_macs)


def human(n: float) -> str:
    """A count with a k/M/G suffix and three significant digits: ``47104 -> "47.1 k"``."""
    for factor, suffix in ((1e9, " G"), (1e6, " M"), (1e3, " k")):
        if abs(n) >= factor:
            return f"{n / factor:.3g}{suffix}"
    return f"{n:.0f}"


def describe_cost(cost: dict[str, int] | ModelCost) -> str:
    """One line: ``backbone 47.1 k params, 12.3 M MACs; head 5.57 M params, 3.2 M MACs (at 56 px)``."""
    c = cost.to_dict() if isinstance(cost, ModelCost) else cost
    return (f"backbone {human(c['backbone_params'])} params, {human(c['backbone_macs'])} MACs; "
            f"head {human(c['head_params'])} params, {human(c['head_macs'])} MACs (one image at {c['img_size']} px)")


def cost_lines(costs: dict[str, Any] | None) -> list[str]:
    """Lines for a ``{"student": cost, "teacher": cost or None}`` mapping (as in metrics.json's ``cost``)."""
    if not costs:
        return []
    return [f"{who}: {describe_cost(c)}" for who in ("teacher", "student") if (c := costs.get(who))]


def run_costs(runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any] | None:
    """The ``cost`` entry of a comparison's runs (their metrics.json), preferring one with a teacher.

    Every run of a comparison shares the student architecture and the teacher, so one entry describes all.
    """
    found = [m["cost"] for metrics in runs.values() for m in metrics if m.get("cost")]
    with_teacher = [c for c in found if c.get("teacher")]
    return (with_teacher or found or [None])[0]
