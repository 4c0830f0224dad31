"""Multi-label distillation losses: L2D (MLD, CD, ID, LED), the baselines and the distiller registry.

Functions compute one term from tensors; registered distillers (`create_distiller`) compute a whole
training objective from `mlkd.outputs.ModelOutput`s. See method.md for the definitions.
"""
from mlkd.losses.base import Distiller
from mlkd.losses.features import mse_loss, pkt_loss, rkd_angle_loss, rkd_distance_loss
from mlkd.losses.label_embedding import cd_loss, id_loss, led_loss, padded_structure_losses, structure_loss
from mlkd.losses.logits import bce_sum_loss, kd_loss, mld_loss, ps_loss
# Importing the distiller classes registers them under their names.
from mlkd.losses.objective import (
    CDDistiller,
    IDDistiller,
    KDDistiller,
    L2DLoss,
    LEDDistiller,
    MLDDistiller,
    MSEDistiller,
    PKTDistiller,
    PSDistiller,
    RKDDistiller,
    VanillaDistiller,
)
from mlkd.losses.registry import create_distiller, list_distillers, register_distiller
from mlkd.losses.reviewkd import ReviewKD

__all__ = [
    "Distiller", "create_distiller", "list_distillers", "register_distiller",
    "bce_sum_loss", "mld_loss", "kd_loss", "ps_loss",
    "structure_loss", "padded_structure_losses", "cd_loss", "id_loss", "led_loss",
    "mse_loss", "rkd_distance_loss", "rkd_angle_loss", "pkt_loss",
    "L2DLoss", "VanillaDistiller", "MLDDistiller", "LEDDistiller", "CDDistiller", "IDDistiller",
    "KDDistiller", "PSDistiller", "MSEDistiller", "RKDDistiller", "PKTDistiller", "ReviewKD",
]
