"""mlkd: multi-label knowledge distillation for PyTorch (L2D and the baselines), on CPU and GPU.

The public API, small on purpose:
    create_model, list_models          models (any timm backbone + label-wise embedding head)
    create_dataset, list_datasets      data readers and the embedded default `fashion_mosaic`
    create_distiller, list_distillers  the distillation losses behind one registry; L2DLoss
    train, distill, evaluate, export   the jobs the `mlkd` command runs
    ModelOutput, LossOutput, RunConfig the data types that flow between them
"""
from mlkd.api import distill, evaluate, export, train
from mlkd.config import RunConfig
from mlkd.data import create_dataset, list_datasets
from mlkd.losses import L2DLoss, create_distiller, list_distillers
from mlkd.models import create_model, list_models
from mlkd.outputs import LossOutput, ModelOutput

__version__ = "0.1.0"

__all__ = [
    "L2DLoss", "LossOutput", "ModelOutput", "RunConfig", "create_dataset", "create_distiller", "create_model",
    "distill", "evaluate", "export", "list_datasets", "list_distillers", "list_models", "train",
]
