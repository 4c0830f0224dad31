"""Defaults that follow the run: the learning rate by initialisation and schedule, the head width by backbone."""
from __future__ import annotations

import logging

import pytest
import torch

from mlkd import config
from mlkd.config import LR_FROM_SCRATCH, LR_PRETRAINED, SHORT_SCHEDULE_STEPS, default_lr, load_yaml, make_config
from mlkd.engine.trainer import fit
from mlkd.models import create_model
from mlkd.models.factory import default_head_dims, head_parameter_count
from synthetic import write_fashion_like


def test_lr_follows_the_initialisation_and_the_schedule_when_not_given():
    long, short = SHORT_SCHEDULE_STEPS, SHORT_SCHEDULE_STEPS - 1
    assert make_config(model="tiny_cnn").lr is None  # resolved by fit, once the data set is read
    assert default_lr(make_config(model="tiny_cnn"), long) == LR_FROM_SCRATCH
    assert default_lr(make_config(model="tiny_cnn"), short) == LR_FROM_SCRATCH
    for pretrained in (make_config(model="resnet18", pretrained=True),
                       make_config(model="tf_efficientnet_lite0", weights="efficientnet-lite0")):
        assert default_lr(pretrained, long) == LR_PRETRAINED
        assert default_lr(pretrained, short) == LR_FROM_SCRATCH  # a short fine-tune needs the higher rate
    assert make_config(model="tiny_cnn", lr=0.02).lr == 0.02  # an explicit value always wins
    assert LR_FROM_SCRATCH > LR_PRETRAINED


def test_fit_resolves_the_default_lr_from_the_schedule_and_records_it(tmp_path, monkeypatch, caplog):
    """A run without lr uses `default_lr` of its real step count, writes that rate into config.yaml
    and resumes without calling it a changed setting."""
    root = write_fashion_like(tmp_path / "data", n_train=160, n_test=60)
    head = {"embed_dim": 16, "num_heads": 2, "ffn_dim": 16}
    weights = tmp_path / "w.pt"  # a "pretrained" tiny_cnn: a saved model of the same shape
    torch.save(create_model("tiny_cnn", 10, **head).state_dict(), weights)
    base = dict(dataset="fashion_mosaic", data_root=str(root), dataset_options={"num_mosaics": 96}, img_size=32,
                batch_size=16, model="tiny_cnn", model_options=head, augment=False, device="cpu", quiet=True,
                tensorboard=False, threads=1, weights=str(weights))
    # 96 mosaics, 10 % for validation: 86 training images, 5 batches of 16 per epoch.
    with caplog.at_level(logging.INFO, logger="mlkd"):
        short = fit(make_config(**base, epochs=2, output=str(tmp_path / "short")))
    assert short.config.lr == LR_FROM_SCRATCH  # 10 steps: a short fine-tune
    assert load_yaml(tmp_path / "short" / "config.yaml")["lr"] == LR_FROM_SCRATCH
    assert "lr not given: 0.003" in caplog.text and "10 optimizer steps" in caplog.text
    monkeypatch.setattr(config, "SHORT_SCHEDULE_STEPS", 10)
    long = fit(make_config(**base, epochs=1, schedule_epochs=2, output=str(tmp_path / "long")))
    assert long.config.lr == LR_PRETRAINED  # the schedule's 10 steps count, not the 5 run
    resumed = fit(make_config(**base, epochs=1, schedule_epochs=2, resume=True, output=str(tmp_path / "long")))
    assert resumed.config.lr == LR_PRETRAINED


@pytest.mark.parametrize("preset", ["coco2014", "voc2007", "nuswide"])
def test_paper_presets_keep_the_paper_lr(preset):
    from pathlib import Path

    import mlkd

    path = Path(mlkd.__file__).parent / "configs" / f"{preset}.yaml"
    assert load_yaml(path)["lr"] == pytest.approx(1e-4)
    assert make_config(path).lr == pytest.approx(1e-4)


def _trainable(module):
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


@pytest.mark.parametrize("name", ["tiny_cnn", "small_cnn"])
def test_default_head_is_no_larger_than_its_backbone(name):
    model = create_model(name, num_classes=10)
    backbone = sum(p.numel() for p in model.backbone.parameters())
    head = _trainable(model.head)
    assert head <= backbone
    # ... and it is the widest candidate that fits: the next wider one would not.
    d = model.model_args["embed_dim"]
    wider = [w for w in (768, 512, 384, 256, 192, 128, 96, 64, 32) if w > d]
    if wider:
        w = min(wider)
        assert head_parameter_count(model.head.token_proj.in_features, 10, w, round(8 * w / 3)) > backbone


def test_head_parameter_count_matches_the_module():
    model = create_model("tiny_cnn", num_classes=7, embed_dim=48, num_heads=3, ffn_dim=100)
    assert head_parameter_count(model.head.token_proj.in_features, 7, 48, 100) == _trainable(model.head)


def test_large_backbones_get_the_papers_head_and_explicit_sizes_win():
    # ResNet-34's 21 M parameters: d = 768, 8 heads, feed-forward 2048, as in the paper.
    assert default_head_dims(21_284_672, 512, 80) == (768, 8, 2048)
    assert default_head_dims(46_832, 64, 10) == (64, 2, 171)
    assert default_head_dims(46_832, 64, 10, embed_dim=96) == (96, 3, 256)
    assert default_head_dims(46_832, 64, 10, embed_dim=100)[1] in (1, 2, 4, 5)  # a divisor of 100
    model = create_model("tiny_cnn", num_classes=5, embed_dim=32, ffn_dim=40)
    assert (model.model_args["embed_dim"], model.model_args["ffn_dim"]) == (32, 40)
    # The resolved sizes are recorded, so a checkpoint rebuilds the same architecture.
    rebuilt = create_model(**model.model_args)
    assert rebuilt.model_args == model.model_args
