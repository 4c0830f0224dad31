"""The teacher's inference settings (issue 11): channels_last changes speed, not outputs."""
from __future__ import annotations

import torch

from mlkd.engine.checkpoint import save_checkpoint
from mlkd.engine.trainer import load_teacher
from mlkd.models import create_model


def test_channels_last_teacher_outputs_equal_the_plain_teacher(tmp_path):
    torch.manual_seed(0)
    model = create_model("tiny_cnn", 3, embed_dim=16, num_heads=2, ffn_dim=16)
    path = save_checkpoint({"model": model.state_dict(), "model_args": model.model_args, "classes": ["a", "b", "c"],
                            "config": {"img_size": 32}, "input_norm": {"mean": [0.5] * 3, "std": [0.25] * 3}},
                           tmp_path / "teacher.pt")
    fast, _ = load_teacher(str(path), ["a", "b", "c"], torch.device("cpu"))
    plain, _ = load_teacher(str(path), ["a", "b", "c"], torch.device("cpu"), channels_last=False)
    assert fast.inference_settings == {"channels_last": True} and plain.inference_settings == {"channels_last": False}
    x = torch.rand(4, 3, 32, 32)
    got, want = fast(x), plain(x)
    # Stated tolerance: another convolution algorithm, same float32 arithmetic up to rounding.
    for a, b in [(got.logits, want.logits), (got.label_embeddings, want.label_embeddings),
                 *zip(got.features, want.features)]:
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
