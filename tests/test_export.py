"""ONNX export: the logits graph matches PyTorch under onnxruntime at several batch sizes."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from mlkd.models import create_model, export_onnx


@pytest.mark.parametrize("name,size", [("tiny_cnn", 56), ("resnet18", 224)])
def test_onnx_matches_pytorch_with_dynamic_batch(tmp_path, name, size):
    torch.manual_seed(0)
    model = create_model(name, 7, embed_dim=64, num_heads=8, ffn_dim=128)
    model.train()  # export must switch to eval and restore the mode afterwards
    path = export_onnx(model, tmp_path / "sub" / "model.onnx", img_size=size)
    assert model.training
    assert path == tmp_path / "sub" / "model.onnx" and path.is_file()
    assert sorted(p.name for p in path.parent.iterdir()) == ["model.onnx"]  # no temp file left behind
    graph = onnx.load(str(path)).graph
    assert [i.name for i in graph.input] == ["images"] and [o.name for o in graph.output] == ["logits"]
    assert graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    model.eval()
    for batch in (1, 3):
        x = torch.randn(batch, 3, size, size)
        (got,) = session.run(None, {"images": x.numpy()})
        with torch.no_grad():
            want = model(x).logits.numpy()
        assert got.shape == (batch, 7)
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_export_rejects_non_mlkd_models(tmp_path):
    with pytest.raises(ValueError, match="needs a MultiLabelModel"):
        export_onnx(torch.nn.Linear(2, 2), tmp_path / "x.onnx", 32)
