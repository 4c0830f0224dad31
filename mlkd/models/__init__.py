"""Multi-label models: any timm backbone or a built-in CNN, with the label-wise embedding head.

    model = create_model("resnet18", num_classes=80)
    out = model(images)                  # ModelOutput: logits [N, q], label_embeddings [N, q, d], features
    logits = model.forward_logits(images)  # the cheap inference path
"""
from mlkd.models.export import export_onnx
from mlkd.models.factory import create_model, list_models, register_model
from mlkd.models.head import LabelWiseHead
from mlkd.models.model import MultiLabelModel
from mlkd.models.weights import PACKAGED_WEIGHTS, LoadReport, load_efficientnet_lite, load_weights

__all__ = [
    "create_model",
    "list_models",
    "register_model",
    "MultiLabelModel",
    "LabelWiseHead",
    "load_weights",
    "load_efficientnet_lite",
    "LoadReport",
    "PACKAGED_WEIGHTS",
    "export_onnx",
]
