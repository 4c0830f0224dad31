"""Weights: local checkpoint round trips, strict/non-strict loads, packaged EfficientNet-Lite weights."""
from __future__ import annotations

import logging
import random
from dataclasses import dataclass

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from safetensors.torch import save_file
from skimage import data

from mlkd.models import create_model, load_efficientnet_lite
from mlkd.models.weights import packaged_state_dict

SMALL_HEAD = dict(embed_dim=32, num_heads=4, ffn_dim=64)
ESPRESSO = 967  # ImageNet-1k class index


@dataclass
class _NotATensor:
    value: int


def _same_state(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        torch.testing.assert_close(sa[k], sb[k], rtol=0, atol=0, msg=k)


def _trained_like(model: torch.nn.Module) -> torch.nn.Module:
    """Perturb every float tensor so that a load that does nothing cannot pass."""
    with torch.no_grad():
        for t in model.state_dict().values():
            if t.is_floating_point():
                t.add_(torch.randn_like(t) * 0.1)
    return model


@pytest.mark.parametrize("fmt", ["pt_checkpoint", "pt_state_dict", "pth_ddp", "safetensors"])
def test_whole_model_round_trip(tmp_path, fmt):
    torch.manual_seed(0)
    src = _trained_like(create_model("tiny_cnn", 5, learn_queries=True, **SMALL_HEAD)).eval()
    state = src.state_dict()
    if fmt == "pt_checkpoint":
        path = tmp_path / "ckpt.pt"
        # As the training engine writes it: RNG states (numpy arrays, Python tuples) and plain config.
        rng = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
        torch.save({"model": state, "model_args": src.model_args, "epoch": 3, "rng": rng,
                    "config": {"lr": 1e-4, "lambdas": {"mld": 10.0}, "teacher": None}}, path)
    elif fmt == "pt_state_dict":
        path = tmp_path / "ckpt.pt"
        torch.save({"state_dict": state}, path)
    elif fmt == "pth_ddp":
        path = tmp_path / "ckpt.pth"
        torch.save({f"module.{k}": v for k, v in state.items()}, path)
    else:
        path = tmp_path / "model.safetensors"
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    dst = create_model("tiny_cnn", 5, learn_queries=True, weights=path, **SMALL_HEAD).eval()
    _same_state(src, dst)
    assert dst.weights_report.target == "model" and not dst.weights_report.skipped
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(dst(x).logits, src(x).logits, rtol=0, atol=0)


def test_frozen_query_checkpoint_loads_into_learned_query_model(tmp_path):
    src = create_model("tiny_cnn", 5, **SMALL_HEAD)
    torch.save(src.state_dict(), tmp_path / "m.pt")
    dst = create_model("tiny_cnn", 5, learn_queries=True, weights=tmp_path / "m.pt", **SMALL_HEAD)
    torch.testing.assert_close(dst.head.queries.detach(), src.head.queries)


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_backbone_only_timm_weights_drop_classifier(tmp_path, suffix):
    torch.manual_seed(0)
    imagenet = _trained_like(timm.create_model("resnet18", num_classes=1000))
    path = tmp_path / f"resnet18{suffix}"
    if suffix == ".pth":
        torch.save(imagenet.state_dict(), path)
    else:
        save_file(imagenet.state_dict(), str(path))
    model = create_model("resnet18", 4, weights=path, **SMALL_HEAD)
    report = model.weights_report
    assert report.target == "backbone" and sorted(report.dropped) == ["fc.bias", "fc.weight"]
    assert not report.skipped
    for k, v in model.backbone.state_dict().items():
        torch.testing.assert_close(v, imagenet.state_dict()[k], rtol=0, atol=0, msg=k)


def test_strict_error_lists_keys_and_non_strict_reports(tmp_path, caplog):
    torch.manual_seed(0)
    src = _trained_like(create_model("tiny_cnn", 5, **SMALL_HEAD))
    torch.save({"model": src.state_dict(), "model_args": src.model_args}, tmp_path / "five.pt")
    with pytest.raises(ValueError) as err:
        create_model("tiny_cnn", 6, weights=tmp_path / "five.pt", **SMALL_HEAD)
    msg = str(err.value)
    assert "shape mismatch (3)" in msg
    for key in ("head.queries: file (5, 32) vs model (6, 32)", "head.label_weight", "head.label_bias"):
        assert key in msg
    assert "strict=False" in msg and "'num_classes': 5" in msg

    with caplog.at_level(logging.WARNING, logger="mlkd.models.weights"):
        dst = create_model("tiny_cnn", 6, weights=tmp_path / "five.pt", strict=False, **SMALL_HEAD)
    report = dst.weights_report
    assert sorted(m.split(":")[0] for m in report.mismatched) == ["head.label_bias", "head.label_weight", "head.queries"]
    assert not report.missing and not report.unexpected
    assert "head.label_bias" in caplog.text
    _same_state(src.backbone, dst.backbone)
    torch.testing.assert_close(dst.head.ffn[0].weight, src.head.ffn[0].weight)


def test_backbone_only_missing_and_unexpected_keys(tmp_path):
    state = create_model("tiny_cnn", 2).backbone.state_dict()
    del state["stages.0.0.1.weight"]  # a BatchNorm weight
    state["extra.weight"] = torch.zeros(3)
    torch.save(state, tmp_path / "b.pt")
    with pytest.raises(ValueError, match=r"(?s)missing in the file \(1\): stages\.0\.0\.1\.weight.*"
                                         r"unexpected in the file \(1\): extra\.weight"):
        create_model("tiny_cnn", 2, weights=tmp_path / "b.pt")
    model = create_model("tiny_cnn", 2, weights=tmp_path / "b.pt", strict=False)
    assert model.weights_report.missing == ["stages.0.0.1.weight"]
    assert model.weights_report.unexpected == ["extra.weight"]
    assert len(model.weights_report.loaded) == len(state) - 1


def test_bad_weight_files(tmp_path):
    with pytest.raises(ValueError, match="neither an existing file nor a packaged name"):
        create_model("tiny_cnn", 2, weights=tmp_path / "nope.pt")
    (tmp_path / "w.txt").write_text("x")
    with pytest.raises(ValueError, match="use .safetensors, .pt, .pth"):
        create_model("tiny_cnn", 2, weights=tmp_path / "w.txt")
    torch.save({"model": create_model("tiny_cnn", 2).state_dict(), "extra": _NotATensor(1)}, tmp_path / "p.pt")
    with pytest.raises(ValueError, match="weights-only checkpoint"):
        create_model("tiny_cnn", 2, weights=tmp_path / "p.pt")
    (tmp_path / "bad.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="cannot read .* as a safetensors file"):
        create_model("tiny_cnn", 2, weights=tmp_path / "bad.safetensors")
    torch.save({"epoch": 1}, tmp_path / "e.pt")
    with pytest.raises(ValueError, match="holds no state dict"):
        create_model("tiny_cnn", 2, weights=tmp_path / "e.pt")


@pytest.mark.slow
@pytest.mark.parametrize("variant", [0, 1, 2])
def test_packaged_efficientnet_lite_classifies_coffee_as_espresso(variant):
    """Honest check of the offline ImageNet weights: espresso (967) in the top-3 for skimage's coffee."""
    model = timm.create_model(f"tf_efficientnet_lite{variant}").eval()
    report = load_efficientnet_lite(model, f"efficientnet-lite{variant}")
    assert not report.missing and not report.dropped
    # Preprocess as the weights expect (timm pretrained_cfg: bicubic resize by crop_pct, centre crop,
    # mean = std = 0.5).
    cfg = timm.data.resolve_model_data_config(model)
    assert cfg["mean"] == (0.5, 0.5, 0.5) and cfg["std"] == (0.5, 0.5, 0.5)
    x = timm.data.create_transform(**cfg)(Image.fromarray(data.coffee())).unsqueeze(0)
    with torch.no_grad():
        top3 = model(x).topk(3).indices[0].tolist()
    assert ESPRESSO in top3, top3


def test_packaged_weights_map_in_order_onto_mlkd_backbone():
    model = create_model("tf_efficientnet_lite0", 10, weights="efficientnet-lite0", **SMALL_HEAD)
    src = [v for k, v in packaged_state_dict("efficientnet-lite0").items() if not k.startswith("_fc.")]
    dst = list(model.backbone.state_dict().values())
    assert len(src) == len(dst) == 294
    for a, b in zip(src, dst):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert model.weights_report.dropped == ["_fc.weight", "_fc.bias"]
    assert model.data_config["mean"] == [0.5, 0.5, 0.5]
    # A classifier of another size keeps its initialisation (the backbone still loads).
    ten = timm.create_model("tf_efficientnet_lite0", num_classes=10)
    report = load_efficientnet_lite(ten, "efficientnet-lite0")
    assert report.missing == ["classifier.weight", "classifier.bias"]


def test_packaged_weights_refuse_other_backbones():
    with pytest.raises(ValueError, match="fit the timm model 'tf_efficientnet_lite1' only, not 'tf_efficientnet_lite0'"):
        create_model("tf_efficientnet_lite0", 3, weights="efficientnet-lite1", **SMALL_HEAD)
    with pytest.raises(ValueError, match="only, not 'resnet18'"):
        create_model("resnet18", 3, weights="efficientnet-lite0", **SMALL_HEAD)
    with pytest.raises(ValueError, match="only, not 'BuiltinCNN'"):
        create_model("tiny_cnn", 3, weights="efficientnet-lite0", **SMALL_HEAD)
    with pytest.raises(ValueError, match="unknown packaged weights"):
        packaged_state_dict("efficientnet-lite9")


class _NetworkAccess(Exception):
    """Raised by the patched download functions: reading a checkpoint must never get there."""


def test_checkpoint_model_args_never_load_weights_from_elsewhere(tmp_path, monkeypatch, caplog):
    from timm.models import _builder

    from mlkd.engine.checkpoint import model_from_checkpoint, save_checkpoint

    model = _trained_like(create_model("resnet18", 3, **SMALL_HEAD))
    # An edited (or foreign) checkpoint whose model_args ask for timm's hub weights and a local file.
    args = dict(model.model_args, pretrained=True, weights=str(tmp_path / "elsewhere.pt"),
                checkpoint_path=str(tmp_path / "elsewhere.pth"))
    path = save_checkpoint({"model": model.state_dict(), "model_args": args, "classes": ["a", "b", "c"]},
                           tmp_path / "best.pt")

    def no_network(*args, **kwargs):
        raise _NetworkAccess("a checkpoint triggered a weights download")

    for name in ("load_pretrained", "load_custom_pretrained", "download_cached_file", "load_state_dict_from_hf"):
        monkeypatch.setattr(_builder, name, no_network)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_network)
    with caplog.at_level(logging.WARNING):
        rebuilt, _ = model_from_checkpoint(path)
    _same_state(rebuilt, model)  # the weights come from the checkpoint itself
    assert "ignoring checkpoint_path, pretrained, weights in its model_args" in caplog.text
    # Keys that are not options of the model are still refused, clearly.
    save_checkpoint({"model": model.state_dict(), "model_args": dict(model.model_args, name="tiny_cnn", colour=1),
                     "classes": ["a", "b", "c"]}, path)
    with pytest.raises(ValueError, match=r"does not hold a model mlkd can rebuild.*takes no backbone options, "
                                         "got colour"):
        model_from_checkpoint(path)
