"""Models: every paper backbone at 224, the label-wise head's values, queries, built-ins, bad input."""
from __future__ import annotations

import json
import re

import pytest
import torch
from torch import nn

from mlkd.models import LabelWiseHead, MultiLabelModel, create_model, list_models
from mlkd.outputs import ModelOutput

PAPER_BACKBONES = [
    "resnet18", "resnet34", "resnet50", "resnet101", "wide_resnet50_2", "wide_resnet101_2",
    "mobilenetv2_100", "repvgg_a0", "repvgg_a2",
    "swin_tiny_patch4_window7_224", "swin_small_patch4_window7_224", "swin_base_patch4_window7_224",
]
# Width of the final map the head reads (timm's forward_features), as in the paper's backbones.
FINAL_CHANNELS = {"resnet18": 512, "resnet34": 512, "resnet50": 2048, "resnet101": 2048,
                  "wide_resnet50_2": 2048, "wide_resnet101_2": 2048, "mobilenetv2_100": 1280,
                  "repvgg_a0": 1280, "repvgg_a2": 1408, "swin_tiny_patch4_window7_224": 768,
                  "swin_small_patch4_window7_224": 768, "swin_base_patch4_window7_224": 1024}
SMALL_HEAD = dict(embed_dim=32, num_heads=4, ffn_dim=64)


def _check_output(model: MultiLabelModel, out: ModelOutput, n: int, q: int, d: int) -> None:
    assert isinstance(out, ModelOutput)
    assert out.logits.shape == (n, q) and out.logits.dtype == torch.float32
    assert out.label_embeddings.shape == (n, q, d) and out.label_embeddings.dtype == torch.float32
    assert [f.shape[1] for f in out.features] == model.feature_channels
    assert all(f.ndim == 4 and f.shape[0] == n for f in out.features)
    assert torch.isfinite(out.logits).all()


@pytest.mark.slow
@pytest.mark.parametrize("name", PAPER_BACKBONES)
def test_paper_backbone_at_224(name):
    torch.manual_seed(0)
    model = create_model(name, num_classes=5, **SMALL_HEAD).eval()
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        out = model(x)
        logits = model.forward_logits(x)
    _check_output(model, out, 1, 5, 32)
    assert model.head.token_proj.in_features == FINAL_CHANNELS[name]
    # The final map the head reads ends the feature list (7×7 at 224 px for all of these).
    assert out.features[-1].shape[1:] == (FINAL_CHANNELS[name], 7, 7)
    assert all(a.shape[-1] >= b.shape[-1] for a, b in zip(out.features, out.features[1:]))  # shallow -> deep
    torch.testing.assert_close(logits, out.logits, rtol=1e-5, atol=1e-5)
    assert len(model.data_config["mean"]) == 3 and len(model.data_config["std"]) == 3
    json.dumps(model.model_args)


def test_swin_final_map_is_normed_nchw_version_of_forward_features():
    torch.manual_seed(0)
    model = create_model("swin_tiny_patch4_window7_224", 3, **SMALL_HEAD).eval()
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        out = model(x)
        nhwc = model.backbone.forward_features(x)  # [N, 7, 7, 768]
    torch.testing.assert_close(out.features[-1], nhwc.permute(0, 3, 1, 2))


def test_efficientnet_final_map_appended_after_last_stage():
    model = create_model("mobilenetv2_100", 3, **SMALL_HEAD)
    assert model.feature_channels == [16, 24, 32, 96, 320, 1280]


@pytest.mark.parametrize("name,size", [("tiny_cnn", 56), ("small_cnn", 64), ("tiny_cnn", 224),
                                       ("tf_efficientnet_lite0", 56), ("tf_efficientnet_lite0", 96)])
def test_small_inputs(name, size):
    torch.manual_seed(0)
    model = create_model(name, 10, embed_dim=64, num_heads=4, ffn_dim=128, img_size=size).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, size, size))
    _check_output(model, out, 2, 10, 64)


def test_builtin_sizes_and_registry():
    assert {"tiny_cnn", "small_cnn"} <= set(list_models())
    assert "resnet18" in list_models(include_timm=True)
    tiny = sum(p.numel() for p in create_model("tiny_cnn", 2).backbone.parameters())
    small = sum(p.numel() for p in create_model("small_cnn", 2).backbone.parameters())
    assert 20_000 <= tiny <= 100_000
    assert 500_000 <= small <= 1_000_000
    model = create_model("small_cnn", 2, img_size=64)
    assert model.data_config is None
    assert model.feature_channels == [24, 48, 96, 160]


def test_model_args_rebuild_same_architecture():
    model = create_model("resnet18", 7, embed_dim=48, num_heads=6, ffn_dim=96, dropout=0.0,
                         learn_queries=True, img_size=(96, 128), drop_rate=0.2)
    args = json.loads(json.dumps(model.model_args))
    assert "weights" not in args and "pretrained" not in args
    rebuilt = create_model(**args)
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {k: v.shape for k, v in model.state_dict().items()}
    assert isinstance(rebuilt.head.queries, nn.Parameter)
    assert rebuilt.model_args == model.model_args


def test_logits_are_per_label_dot_products():
    torch.manual_seed(0)
    model = create_model("tiny_cnn", 6, **SMALL_HEAD).eval()
    with torch.no_grad():
        out = model(torch.randn(3, 3, 32, 32))
    w, b = model.head.label_weight, model.head.label_bias
    expected = torch.stack([out.label_embeddings[:, k] @ w[k] + b[k] for k in range(6)], dim=1)
    torch.testing.assert_close(out.logits, expected, rtol=1e-5, atol=1e-6)


def test_head_equals_reference_decoder_layer_without_self_attention():
    """Our cross-attention must equal torch's MultiheadAttention with the same weights, then post-norm FFN."""
    torch.manual_seed(0)
    head = LabelWiseHead(20, num_classes=5, embed_dim=16, num_heads=4, ffn_dim=24, dropout=0.1).eval()
    tokens = torch.randn(3, 9, 20)
    mha = nn.MultiheadAttention(16, 4, batch_first=True).eval()
    att = head.cross_attn
    with torch.no_grad():
        mha.in_proj_weight.copy_(torch.cat([att.q_proj.weight, att.k_proj.weight, att.v_proj.weight]))
        mha.in_proj_bias.copy_(torch.cat([att.q_proj.bias, att.k_proj.bias, att.v_proj.bias]))
        mha.out_proj.weight.copy_(att.out_proj.weight)
        mha.out_proj.bias.copy_(att.out_proj.bias)
        memory = torch.relu(head.token_proj(tokens))
        queries = head.queries.expand(3, 5, 16)
        x = head.norm1(queries + mha(queries, memory, memory, need_weights=False)[0])
        ffn = head.ffn[3](torch.relu(head.ffn[0](x)))
        expected = head.norm2(x + ffn)
        embeddings, logits = head(tokens)
    torch.testing.assert_close(embeddings, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(logits, (expected * head.label_weight).sum(-1) + head.label_bias)


def test_dropout_only_in_training():
    torch.manual_seed(0)
    model = create_model("tiny_cnn", 4, **SMALL_HEAD)
    x = torch.randn(2, 3, 32, 32)
    model.train()
    assert not torch.equal(model(x).label_embeddings, model(x).label_embeddings)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x).logits, model(x).logits, rtol=0, atol=0)


def test_frozen_queries_get_no_gradient_and_learned_ones_do():
    torch.manual_seed(0)
    x, y = torch.randn(2, 3, 32, 32), torch.randint(0, 2, (2, 4)).float()
    frozen = create_model("tiny_cnn", 4, **SMALL_HEAD)
    assert "head.queries" in frozen.state_dict()
    assert all(p is not frozen.head.queries for p in frozen.parameters())
    before = frozen.head.queries.clone()
    nn.functional.binary_cross_entropy_with_logits(frozen(x).logits, y).backward()
    assert frozen.head.queries.grad is None and not frozen.head.queries.requires_grad
    assert all(p.grad is not None for p in frozen.parameters())
    torch.testing.assert_close(frozen.head.queries, before)
    assert 0.8 < frozen.head.queries.std().item() < 1.2  # random N(0, 1), not zeros

    learned = create_model("tiny_cnn", 4, learn_queries=True, **SMALL_HEAD)
    assert isinstance(learned.head.queries, nn.Parameter)
    nn.functional.binary_cross_entropy_with_logits(learned(x).logits, y).backward()
    assert learned.head.queries.grad is not None and learned.head.queries.grad.abs().sum() > 0


def test_large_label_space_runs():
    torch.manual_seed(0)
    model = create_model("tiny_cnn", 2000, embed_dim=32, num_heads=4, ffn_dim=32).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 32, 32))
    assert out.logits.shape == (2, 2000) and out.label_embeddings.shape == (2, 2000, 32)


def test_bad_input_errors():
    model = create_model("tiny_cnn", 3, **SMALL_HEAD)
    with pytest.raises(ValueError, match=r"expected 3 input channels, got 1"):
        model(torch.randn(1, 1, 32, 32))
    with pytest.raises(ValueError, match=r"expected 3 input channels, got 4"):
        model.forward_logits(torch.randn(1, 4, 32, 32))
    with pytest.raises(ValueError, match=r"\[N, 3, H, W\]"):
        model(torch.randn(3, 32, 32))
    with pytest.raises(ValueError, match=r"unknown model 'resnet19'.*Did you mean.*resnet18"):
        create_model("resnet19", 3)
    with pytest.raises(ValueError, match=r"unknown model 'tiny_cnm'.*tiny_cnn"):
        create_model("tiny_cnm", 3)
    with pytest.raises(ValueError, match="num_classes must be an integer >= 1, got 0"):
        create_model("tiny_cnn", 0)
    with pytest.raises(ValueError, match="num_classes"):
        create_model("resnet18", -2)
    with pytest.raises(ValueError, match="not divisible by num_heads"):
        create_model("tiny_cnn", 3, embed_dim=30, num_heads=8)
    with pytest.raises(ValueError, match="no pretrained weights"):
        create_model("tiny_cnn", 3, pretrained=True)
    with pytest.raises(ValueError, match="takes no backbone options"):
        create_model("tiny_cnn", 3, drop_rate=0.1)


def test_in_chans_option():
    model = create_model("tiny_cnn", 3, in_chans=1, **SMALL_HEAD)
    assert model(torch.randn(2, 1, 32, 32)).logits.shape == (2, 3)
    model = create_model("resnet18", 3, in_chans=1, **SMALL_HEAD)
    assert model.forward_logits(torch.randn(1, 1, 64, 64)).shape == (1, 3)


@pytest.mark.parametrize("option,value,wants", [
    ("embed_dim", "abc", "a positive integer"), ("ffn_dim", "abc", "a positive integer"),
    ("num_heads", 2.5, "a positive integer"), ("embed_dim", 0, "a positive integer"),
    ("embed_dim", True, "a positive integer"), ("in_chans", "rgb", "a positive integer"),
    ("dropout", "abc", r"a number in \[0, 1\)"), ("dropout", 1.5, r"a number in \[0, 1\)"),
    ("learn_queries", "yes", "true or false"),
])
def test_model_options_of_the_wrong_type_are_named(option, value, wants):
    # `--model-option embed_dim=abc` used to raise a TypeError inside default_head_dims.
    with pytest.raises(ValueError, match=rf"model option {option} must be {wants}.*, got {re.escape(repr(value))} "
                                         rf"\(e\.g\. --model-option {option}="):
        create_model("tiny_cnn", 3, **{option: value})


def test_the_other_model_arguments_are_checked():
    with pytest.raises(ValueError, match="img_size must be a positive integer or a pair"):
        create_model("tiny_cnn", 3, img_size="big")
    with pytest.raises(ValueError, match="model name must be a string"):
        create_model(123, 3)
    with pytest.raises(ValueError, match=r"timm model 'resnet18' refused the options colour \(.*colour.*\); check the "
                                         "--model-option names"):
        create_model("resnet18", 3, colour=1)
