"""The frozen teacher: loaded from its checkpoint, run with inference-only settings (issue 11, item 4).

Measured in docs/benchmarks.md (teacher_speed on the CPU, gpu_check's teacher_settings on an H200):

- ``channels_last`` (default on): NHWC memory format, oneDNN's and cuDNN's preferred layout; outputs
  equal to float rounding. 1.5× on the CPU, 1.2× on the GPU in float32.
- ``precision="bfloat16"`` (opt-in, ``--teacher-precision bfloat16``): the teacher's forward pass under
  bf16 autocast even when the student trains in float32; its outputs are handed over in float32 and
  differ from float32 ones by about 0.5 % of their largest value. 1.4× on the CPU over channels_last,
  1.3× on the GPU. (Under ``--amp`` the teacher already runs in the run's autocast dtype.)
- ``compile=True`` (opt-in, ``--compile-teacher``): `torch.compile` of the teacher; outputs equal to
  float rounding; compiling takes seconds on a GPU and about 40 s for the demo teacher on 2 CPU cores.
  1.4× on the CPU over channels_last, 1.8× on the GPU over bf16 channels_last.
- ``torch.inference_mode`` buys nothing over frozen parameters (autograd records nothing either way),
  so the teacher runs under the engine's ``no_grad``.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from mlkd.config import TEACHER_PRECISIONS
from mlkd.engine.checkpoint import model_from_checkpoint
from mlkd.engine.evaluate import ModelInput
from mlkd.outputs import ModelOutput

def load_teacher(path: str | None, classes: list[str], device: torch.device, *, channels_last: bool = True,
                 precision: str = "float32", compile: bool = False) -> tuple[nn.Module, ModelInput]:
    """The frozen teacher from its checkpoint: eval mode, no gradient, classes checked.

    The teacher sees each batch at the resolution and normalisation it was trained with. The inference
    settings (see the module docstring) are recorded in ``teacher.inference_settings`` and applied by
    `run_teacher`.
    """
    if precision not in TEACHER_PRECISIONS:
        raise ValueError(f"teacher precision must be one of {TEACHER_PRECISIONS}, got {precision!r}")
    if not path:
        raise ValueError("this method distils from a teacher: pass --teacher PATH (a best.pt written by mlkd train)")
    teacher, state = model_from_checkpoint(path)
    if list(state["classes"]) != list(classes):
        raise ValueError(f"teacher {path} was trained on classes {state['classes']}, but the data set has "
                         f"{classes}; train a teacher on this data set first")
    teacher.requires_grad_(False)
    size = (state.get("config") or {}).get("img_size")
    teacher = teacher.to(device).eval()
    teacher.inference_settings = {"channels_last": bool(channels_last), "precision": precision,
                                  "compile": bool(compile)}
    if channels_last:
        teacher.to(memory_format=torch.channels_last)
        teacher.register_forward_pre_hook(_to_channels_last)
    if compile:
        teacher.compile()  # in place: calls go through torch.compile; attributes and methods stay
    return teacher, ModelInput.from_stats(state.get("input_norm"), size).to(device)


def run_teacher(teacher: nn.Module, images: Tensor) -> ModelOutput:
    """The teacher's outputs for ``images [B, 3, H, W]`` under its inference settings (`load_teacher`).

    A teacher without recorded settings is simply called. With ``precision="bfloat16"`` the forward
    pass runs under bf16 autocast and the outputs come back in float32, so that the student's losses see
    the dtype they would see from a float32 teacher.
    """
    settings = getattr(teacher, "inference_settings", {})
    try:
        if settings.get("precision", "float32") == "float32":
            return teacher(images)
        with torch.autocast(images.device.type, dtype=torch.bfloat16):
            out = teacher(images)
    except Exception as err:
        if settings.get("compile"):
            raise RuntimeError(f"the compiled teacher failed ({type(err).__name__}: {err}); "
                               "run without --compile-teacher") from err
        raise
    return ModelOutput(out.logits.float(),
                       None if out.label_embeddings is None else out.label_embeddings.float(),
                       [f.float() for f in out.features])


def _to_channels_last(module: nn.Module, args: tuple) -> tuple:
    """Forward pre-hook: the image batch in NHWC memory format (same values, another layout)."""
    return (args[0].contiguous(memory_format=torch.channels_last), *args[1:])
