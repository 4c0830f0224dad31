"""ONNX export: the logits graph matches PyTorch under onnxruntime at several batch sizes."""
from __future__ import annotations

import errno
import re

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from mlkd.memory import OutOfMemoryError
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


def test_a_failed_export_leaves_the_old_file_and_no_temporary_and_names_the_target(tmp_path, monkeypatch):
    model = create_model("tiny_cnn", 3, embed_dim=16, num_heads=2, ffn_dim=16)
    target = tmp_path / "model.onnx"
    target.write_bytes(b"the previous export")

    def disk_full_midway(module, args, f, **kwargs):
        with open(f, "wb") as out:  # the exporter had written part of the graph when the disk filled up
            out.write(b"half a graph")
        raise OSError(errno.ENOSPC, "No space left on device", f)

    monkeypatch.setattr(torch.onnx, "export", disk_full_midway)
    with pytest.raises(OSError, match=rf"could not write {re.escape(str(target))} \(No space left on device\); "
                                      "the disk is full") as raised:
        export_onnx(model, target, 32)
    assert ".tmp" not in str(raised.value)  # the message names the target, not the temporary file
    assert target.read_bytes() == b"the previous export"
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"]


def test_export_out_of_memory_names_the_image_size(tmp_path, monkeypatch):
    model = create_model("tiny_cnn", 3, embed_dim=16, num_heads=2, ffn_dim=16)

    def out_of_memory(*args, **kwargs):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: can't allocate memory: "
                           "you tried to allocate 214748364800 bytes.")

    monkeypatch.setattr(torch.onnx, "export", out_of_memory)
    with pytest.raises(OutOfMemoryError, match=r"exporting on cpu ran out of memory \(RuntimeError: .*can't allocate "
                                               r"memory.*\) with images of 4096x4096 px; pass a smaller --img-size "
                                               r"\(now 4096\)"):
        export_onnx(model, tmp_path / "m.onnx", 4096)
    assert list(tmp_path.iterdir()) == []
