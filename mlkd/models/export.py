"""ONNX export of a model's logits (the inference path) with a dynamic batch size."""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Sequence

import torch
from torch import Tensor, nn

from mlkd.files import atomic_write_named, make_folder
from mlkd.memory import is_out_of_memory, out_of_memory
from mlkd.models.model import MultiLabelModel


class _LogitsOnly(nn.Module):
    """Wraps a `MultiLabelModel` so that the traced graph is ``images [N, C, H, W] -> logits [N, q]``,
    with the per-channel input normalisation ``(x - mean) / std`` in front when ``mean`` is given."""

    def __init__(self, model: MultiLabelModel, mean: Sequence[float] | None, std: Sequence[float] | None) -> None:
        super().__init__()
        self.model = model
        self.normalize = mean is not None
        if self.normalize:
            self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
            self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, images: Tensor) -> Tensor:
        if self.normalize:
            images = (images - self.mean) / self.std
        return self.model.forward_logits(images)


def export_onnx(
    model: MultiLabelModel, path: str | Path, img_size: int | tuple[int, int] = 224, opset: int = 17,
    mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
) -> Path:
    """Write ``model``'s logits as an ONNX graph: input ``images [batch, C, H, W]``, output
    ``logits [batch, q]``, with the batch size dynamic and ``H, W`` fixed to ``img_size``.

    The model is exported in eval mode (dropout off, BatchNorm running statistics) and its mode is
    restored afterwards. The file is written like a checkpoint (`mlkd.files.atomic_write_named`): to a
    temporary file in the same folder, then renamed, so a failed export leaves neither a truncated
    ``path`` nor a temporary file, and ``path``'s previous content, if any, stays intact.

    Args:
        model: the `MultiLabelModel` to export.
        path: output file (parent folders are created).
        img_size: input size, ``int`` or ``(H, W)``.
        opset: ONNX opset version.
        mean, std: per-channel input statistics the model was trained with; when given, the graph
            takes raw images in [0, 1] and normalises them itself.

    Returns:
        ``path`` as a `Path`.

    Raises:
        ValueError: ``model`` is not a `MultiLabelModel` or ``img_size`` is invalid.
        OSError: ``path`` cannot be written (named, with the likely cause).
        mlkd.memory.OutOfMemoryError: tracing at ``img_size`` ran out of memory (the message says so).
    """
    if not isinstance(model, MultiLabelModel):
        raise ValueError(f"export_onnx needs a MultiLabelModel from create_model, got {type(model).__name__}")
    if (mean is None) != (std is None):
        raise ValueError("export_onnx: pass both mean and std (per-channel input statistics), or neither")
    h, w = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
    if h < 1 or w < 1:
        raise ValueError(f"img_size must be positive, got {img_size!r}")
    path = Path(path)
    make_folder(path.parent)
    param = next(model.parameters())
    # Batch 2, not 1, so that no size-1 broadcasting gets baked into the traced graph.
    example = torch.zeros(2, model.in_chans, h, w, dtype=param.dtype, device=param.device)
    was_training = model.training
    model.eval()
    wrapped = _LogitsOnly(model, mean, std).to(param.device)

    def write_to(tmp: Path) -> None:
        with torch.no_grad(), warnings.catch_warnings():
            # The TorchScript exporter announces its deprecation on every call; the graph is still exact.
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.onnx.export(
                wrapped, (example,), str(tmp), dynamo=False,
                input_names=["images"], output_names=["logits"],
                dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}},
                opset_version=opset, do_constant_folding=True,
            )

    try:
        # Like every file mlkd writes: a temporary file beside ``path``, renamed over it when complete.
        return atomic_write_named(path, write_to)
    except (MemoryError, RuntimeError) as err:
        if not is_out_of_memory(err):
            raise
        raise out_of_memory(err, f"exporting on {param.device}", f"images of {h}x{w} px",
                            f"pass a smaller --img-size (now {h})") from err
    finally:
        model.train(was_training)
