"""The label-chunked, recomputed decoder layer of the label-wise head equals the plain one (issue 11)."""
from __future__ import annotations

import copy

import torch

from mlkd.models.head import LabelWiseHead


def test_chunked_head_values_and_gradients_equal_the_unchunked_head_float64():
    torch.manual_seed(0)
    plain = LabelWiseHead(12, 11, embed_dim=16, num_heads=4, ffn_dim=24, dropout=0.0, learn_queries=True).double()
    chunked = copy.deepcopy(plain)
    chunked.chunk_labels = 4  # chunks of 4, 4 and 3 labels
    tokens = torch.randn(3, 5, 12, dtype=torch.float64)
    t1, t2 = tokens.clone().requires_grad_(True), tokens.clone().requires_grad_(True)
    (e1, z1), (e2, z2) = plain(t1), chunked(t2)
    torch.testing.assert_close(e2, e1, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(z2, z1, rtol=1e-12, atol=1e-12)
    g = torch.randn_like(e1)
    ((e1 * g).sum() + z1.pow(2).sum()).backward()
    ((e2 * g).sum() + z2.pow(2).sum()).backward()
    torch.testing.assert_close(t2.grad, t1.grad, rtol=1e-12, atol=1e-12)
    for (name, p1), p2 in zip(plain.named_parameters(), chunked.parameters()):
        torch.testing.assert_close(p2.grad, p1.grad, rtol=1e-12, atol=1e-12, msg=name)
    with torch.no_grad():  # inference runs the chunks without checkpointing
        torch.testing.assert_close(chunked.eval()(tokens)[0], plain.eval()(tokens)[0], rtol=1e-12, atol=1e-12)
