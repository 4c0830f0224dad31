"""Checkpoint files: written atomically, read without running code.

A checkpoint is a dict saved with `torch.save`:
    model        the model's state dict (the student under `distill`; never the teacher)
    model_args   keyword arguments of `create_model` that rebuild the architecture
    classes      label names, index = position
    config       the resolved `RunConfig` as a dict
    epoch        epochs completed
    optimizer, scheduler, scaler, distiller, rng, best_map, best_epoch, history   (last.pt, for --resume)

Everything in it is a tensor, a number, a string, ``None`` or a list/tuple/dict of those, so that
`torch.load(weights_only=True)` reads it. mlkd loads every checkpoint that way: a file that needs more
(a pickled Python object, which could run code while loading) is refused, never executed.
"""
from __future__ import annotations

import logging
import pickle
import random
import re
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from mlkd.files import atomic_write, make_folder
from mlkd.models import create_model

logger = logging.getLogger(__name__)

_PLAIN = (str, int, float, bool, type(None), torch.dtype, torch.device, torch.Size)


def save_checkpoint(state: dict[str, Any], path: str | Path) -> Path:
    """Write ``state`` to ``path`` atomically: a temporary file in the same folder, then a rename.

    A run killed mid-write leaves the previous checkpoint intact, never a truncated one.

    Raises:
        TypeError: ``state`` holds something `torch.load(weights_only=True)` would refuse (named by key).
        OSError: the file could not be written (disk full, read-only folder); the message names it.
    """
    _check_plain(state, "state")
    path = Path(path)
    make_folder(path.parent)
    return atomic_write(path, lambda f: torch.save(state, f))


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by `save_checkpoint` with ``weights_only=True``.

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file is corrupt, not a torch file, not an mlkd checkpoint, or it needs more
            than tensors and plain containers to load (refused: unpickling it could run code).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist; pass the path of a .pt file written by mlkd")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        found = re.search(r"GLOBAL (\S+)", str(err))
        if found:
            raise ValueError(
                f"checkpoint {path} was refused: it holds a pickled Python object ({found.group(1)}), and loading "
                "it could run arbitrary code. mlkd reads only checkpoints of tensors and plain containers "
                "(weights_only); re-create it with this version of mlkd train/distill, or, if it is a plain "
                "state dict you trust, pass it as --weights") from None
        raise _unreadable(path, err) from None
    except Exception as err:  # torch raises several types for truncated or foreign files
        raise _unreadable(path, err) from None
    if not isinstance(state, dict) or "model" not in state or "model_args" not in state:
        raise ValueError(f"checkpoint {path} is not an mlkd checkpoint (no 'model'/'model_args' keys); "
                         "use a last.pt or best.pt written by mlkd train/distill")
    return state


def recorded_config(path: str | Path) -> dict[str, Any]:
    """The run settings a checkpoint records under ``"config"``: what the run folder's config.yaml holds.

    Raises:
        FileNotFoundError, ValueError: as `load_checkpoint`; ValueError also when it records no settings.
    """
    config = load_checkpoint(path).get("config")
    if not isinstance(config, dict) or not config:
        raise ValueError(f"checkpoint {path} records no run settings ('config'); pass the run's settings "
                         "with --config FILE.yaml")
    return dict(config)


def _unreadable(path: Path, err: Exception) -> ValueError:
    first_line = str(err).strip().splitlines()[-1] if str(err).strip() else ""
    return ValueError(f"checkpoint {path} cannot be read ({type(err).__name__}: {first_line}); "
                      "it is corrupt or not a torch file — re-create it with mlkd train")


def model_from_checkpoint(path: str | Path | dict[str, Any], map_location: str | torch.device = "cpu",
                          source: str | Path | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model saved in a checkpoint and load its weights.

    The architecture is rebuilt from the checkpoint's ``model_args`` without any argument that loads
    weights (`rebuild_args`): reading a checkpoint never downloads anything.

    Args:
        path: the checkpoint file, or its already loaded dict.
        source: the file a given dict was read from, for error messages.

    Returns:
        The model (in eval mode) and the checkpoint dict.

    Raises:
        ValueError: the checkpoint does not hold a model mlkd can rebuild (named, with the reason).
    """
    state = path if isinstance(path, dict) else load_checkpoint(path, map_location)
    where = f"checkpoint {source if isinstance(path, dict) else path}" if source or not isinstance(path, dict) \
        else "the checkpoint"
    if not isinstance(state["model_args"], dict) or not isinstance(state["model"], dict) \
            or not isinstance(state.get("classes"), (list, tuple)):
        raise ValueError(f"{where} is not an mlkd checkpoint ('model_args' and 'model' must be dicts, 'classes' "
                         "a list of label names); use a last.pt or best.pt written by mlkd train/distill")
    try:
        model = create_model(**rebuild_args(state["model_args"], where))
        model.load_state_dict(state["model"])
    except (TypeError, ValueError, RuntimeError, KeyError) as err:  # what create_model and load_state_dict raise
        lines = [line.strip() for line in str(err).strip().splitlines() if line.strip()]
        raise ValueError(f"{where} does not hold a model mlkd can rebuild ({type(err).__name__}: "
                         f"{' '.join(lines[:2])[:300]}); it is damaged or was written by another program") from None
    return model.eval(), state


# create_model / timm.create_model arguments that load weights from somewhere: timm's hub or a URL
# (``pretrained``, ``pretrained_cfg*``, ``cache_dir``) or a local file (``weights``, ``checkpoint_path``).
# A checkpoint carries its own weights, so a file never gets to choose these.
LOADING_ARGS = frozenset({"pretrained", "pretrained_cfg", "pretrained_cfg_overlay", "cache_dir", "weights",
                          "checkpoint_path", "strict"})


def rebuild_args(model_args: dict[str, Any], where: str = "the checkpoint") -> dict[str, Any]:
    """The ``create_model`` arguments that rebuild a checkpoint's architecture, and nothing that loads weights.

    mlkd writes ``model_args`` without the loading arguments (`LOADING_ARGS`); a file that has them was
    edited or written by another program. They are dropped (``pretrained`` is forced off), so that reading
    a checkpoint never reaches the network or another file: the weights come from the checkpoint itself.
    Any other key is an architecture option; one that the model does not take is refused by `create_model`.

    Args:
        model_args: the checkpoint's ``"model_args"``.
        where: names the checkpoint in the log.
    """
    args = {k: v for k, v in model_args.items() if k not in LOADING_ARGS}
    ignored = sorted(str(k) for k, v in model_args.items() if k in LOADING_ARGS and v not in (None, False))
    if ignored:
        logger.warning("%s: ignoring %s in its model_args (the weights come from the checkpoint itself; "
                       "a checkpoint never loads weights from the network or another file)", where, ", ".join(ignored))
    return args


def rng_state() -> dict[str, Any]:
    """Every random generator the training loop draws from, as tensors, numbers and tuples."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"python": random.getstate(), "torch": torch.get_rng_state(),
             "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss))}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what `rng_state` returned."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _check_plain(obj: Any, where: str) -> None:
    """Raise a TypeError naming the first value a weights-only load would refuse."""
    if isinstance(obj, torch.Tensor):
        if type(obj) not in (torch.Tensor, nn.Parameter):
            raise TypeError(f"checkpoint value {where} is a {type(obj).__name__}; save plain tensors")
    elif isinstance(obj, dict):
        if type(obj) not in (dict, OrderedDict):
            raise TypeError(f"checkpoint value {where} is a {type(obj).__name__}; use a dict")
        for key, value in obj.items():
            if not isinstance(key, (str, int)):
                raise TypeError(f"checkpoint key {key!r} in {where} is a {type(key).__name__}; use str or int keys")
            _check_plain(value, f"{where}[{key!r}]")
    elif isinstance(obj, (list, tuple)):
        if type(obj) not in (list, tuple):  # namedtuples and other subclasses pickle as their class
            raise TypeError(f"checkpoint value {where} is a {type(obj).__name__}; use a list or tuple")
        for i, value in enumerate(obj):
            _check_plain(value, f"{where}[{i}]")
    elif type(obj) not in _PLAIN:
        raise TypeError(f"checkpoint value {where} is a {type(obj).__name__}, which a weights-only load refuses; "
                        "store tensors, numbers, strings and lists/dicts of them")
