"""Atomic checkpoint files and the models they hold.

A checkpoint is a dict saved with `torch.save`:
    model        the model's state dict (the student under `distill`; never the teacher)
    model_args   keyword arguments of `create_model` that rebuild the architecture
    classes      label names, index = position
    config       the resolved `RunConfig` as a dict
    epoch        epochs completed
    optimizer, scheduler, scaler, distiller, rng, best_map, history   (for --resume)
"""
from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from mlkd.models import create_model


def save_checkpoint(state: dict[str, Any], path: str | Path) -> Path:
    """Write ``state`` to ``path`` atomically: a temporary file in the same folder, then a rename.

    A run killed mid-write leaves the previous checkpoint intact, never a truncated one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by `save_checkpoint`, with errors that say what is wrong."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist; pass the path of a .pt file written by mlkd")
    try:
        # Our checkpoints hold RNG states and plain Python containers, hence weights_only=False;
        # only load checkpoints you trust (as with any pickle).
        state = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as err:  # torch raises several types for truncated or foreign files
        raise ValueError(f"checkpoint {path} cannot be read ({type(err).__name__}: {err}); "
                         "it is corrupt or not a torch file — re-create it with mlkd train") from None
    if not isinstance(state, dict) or "model" not in state or "model_args" not in state:
        raise ValueError(f"checkpoint {path} is not an mlkd checkpoint (no 'model'/'model_args' keys); "
                         "use a last.pt or best.pt written by mlkd train/distill")
    return state


def model_from_checkpoint(path: str | Path | dict[str, Any],
                          map_location: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model saved in a checkpoint and load its weights.

    Returns:
        The model (in eval mode) and the checkpoint dict.
    """
    state = path if isinstance(path, dict) else load_checkpoint(path, map_location)
    model = create_model(**state["model_args"])
    model.load_state_dict(state["model"])
    return model.eval(), state


def rng_state() -> dict[str, Any]:
    """Every random generator the training loop draws from."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
