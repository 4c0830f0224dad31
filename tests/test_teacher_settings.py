"""The teacher's inference settings (issue 11, item 4): channels_last and compile change speed, not
outputs; bfloat16 precision changes outputs within a stated tolerance and hands them over in float32."""
from __future__ import annotations

import pytest
import torch

from mlkd.engine.checkpoint import save_checkpoint
from mlkd.engine.teacher import load_teacher, run_teacher
from mlkd.models import create_model

CLASSES = ["a", "b", "c"]


@pytest.fixture
def teacher_path(tmp_path):
    torch.manual_seed(0)
    model = create_model("tiny_cnn", 3, embed_dim=16, num_heads=2, ffn_dim=16)
    return save_checkpoint({"model": model.state_dict(), "model_args": model.model_args, "classes": CLASSES,
                            "config": {"img_size": 32}, "input_norm": {"mean": [0.5] * 3, "std": [0.25] * 3}},
                           tmp_path / "teacher.pt")


def outputs(out):
    return [out.logits, out.label_embeddings, *out.features]


def assert_outputs_close(got, want, tol):
    for a, b in zip(outputs(got), outputs(want), strict=True):
        assert a.dtype == torch.float32
        # Tolerance relative to the output's largest value (bf16 keeps 8 significant bits).
        torch.testing.assert_close(a, b, rtol=tol, atol=tol * float(b.abs().max()))


def test_channels_last_teacher_outputs_equal_the_plain_teacher(teacher_path):
    fast, _ = load_teacher(str(teacher_path), CLASSES, torch.device("cpu"))
    plain, _ = load_teacher(str(teacher_path), CLASSES, torch.device("cpu"), channels_last=False)
    assert fast.inference_settings == {"channels_last": True, "precision": "float32", "compile": False}
    assert plain.inference_settings["channels_last"] is False
    x = torch.rand(4, 3, 32, 32)
    # Stated tolerance: another convolution algorithm, same float32 arithmetic up to rounding.
    assert_outputs_close(run_teacher(fast, x), run_teacher(plain, x), 1e-5)


def test_bfloat16_teacher_is_within_tolerance_and_hands_over_float32(teacher_path):
    plain, _ = load_teacher(str(teacher_path), CLASSES, torch.device("cpu"))
    half, _ = load_teacher(str(teacher_path), CLASSES, torch.device("cpu"), precision="bfloat16")
    x = torch.rand(8, 3, 32, 32)
    want, got = run_teacher(plain, x), run_teacher(half, x)
    # It did run in bfloat16: not bit-equal to float32 ...
    assert not torch.equal(got.logits, want.logits)
    # ... and within the stated tolerance: 2 % of each output's largest value (measured: under 1 %).
    assert_outputs_close(got, want, 2e-2)


def test_unknown_teacher_precision_is_refused(teacher_path):
    with pytest.raises(ValueError, match="teacher precision must be one of"):
        load_teacher(str(teacher_path), CLASSES, torch.device("cpu"), precision="fp8")


@pytest.mark.slow
def test_compiled_teacher_outputs_equal_the_eager_teacher(teacher_path):
    eager, _ = load_teacher(str(teacher_path), CLASSES, torch.device("cpu"))
    compiled, _ = load_teacher(str(teacher_path), CLASSES, torch.device("cpu"), compile=True)
    assert compiled.inference_settings["compile"] is True
    x = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        # Stated tolerance: the compiler fuses and reorders float32 arithmetic (rounding only).
        assert_outputs_close(run_teacher(compiled, x), run_teacher(eager, x), 1e-4)
