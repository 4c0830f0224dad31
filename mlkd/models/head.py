"""The label-wise embedding head (method.md §4): one query per label cross-attends to the image tokens.

The head turns a backbone's final feature map, flattened into ``L`` tokens of ``C_in`` channels, into
label-wise embeddings ``[N, q, d]`` and per-label logits ``[N, q]``:

1. tokens ``[N, L, C_in]`` -> Linear(C_in -> d) -> ReLU;
2. ``q`` label queries ``[q, d]`` (random and frozen by default, trained with ``learn_queries=True``);
3. one post-norm transformer decoder layer *without* self-attention among the queries: multi-head
   cross-attention from the queries to the tokens, then a ReLU feed-forward block;
4. the decoder output is the label-wise embedding ``e_k``; logit ``z_k = <e_k, w_k> + b_k`` with a
   separate weight vector per label (a "group FC"), computed for all labels by one einsum.

Nothing here is quadratic in ``q``: the queries never attend to each other, and the query projection is
computed once per forward for all images (the queries do not depend on the image). The ``[N, q, d]``
activations themselves are inherent to the method; `benchmarks/head_speed.py` measures them.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint


# The default label chunking of `LabelWiseHead` (see its ``chunk_labels``).
AUTO_CHUNK_LABELS, AUTO_CHUNK_ABOVE = 256, 2048


class LabelCrossAttention(nn.Module):
    """Multi-head attention from ``q`` image-independent label queries to ``L`` image tokens.

    Unlike `nn.MultiheadAttention`, the query projection runs once on the shared ``[q, d]`` queries
    instead of once per image on an expanded ``[N, q, d]`` copy, which saves ``N·q·d²`` multiply-adds
    per forward (significant when q is in the thousands).

    Args:
        embed_dim: model width ``d``.
        num_heads: number of attention heads; must divide ``embed_dim``.
        dropout: dropout probability on the attention weights (training only).
    """

    def __init__(self, embed_dim: int, num_heads: int, dropout: float) -> None:
        super().__init__()
        if embed_dim % num_heads != 0:
            raise ValueError(
                f"embed_dim={embed_dim} is not divisible by num_heads={num_heads}; "
                "choose num_heads that divides embed_dim (e.g. embed_dim=768, num_heads=8)"
            )
        self.num_heads = num_heads
        self.head_dim = embed_dim // num_heads
        self.dropout = dropout
        self.q_proj = nn.Linear(embed_dim, embed_dim)
        self.k_proj = nn.Linear(embed_dim, embed_dim)
        self.v_proj = nn.Linear(embed_dim, embed_dim)
        self.out_proj = nn.Linear(embed_dim, embed_dim)

    def forward(self, queries: Tensor, tokens: Tensor) -> Tensor:
        """Attend from the label queries to the tokens.

        Args:
            queries: ``[q, d]`` label queries, shared by every image.
            tokens: ``[N, L, d]`` projected image tokens.

        Returns:
            ``[N, q, d]`` attention output (after the output projection).
        """
        return self.attend(queries, *self.keys_values(tokens))

    def keys_values(self, tokens: Tensor) -> tuple[Tensor, Tensor]:
        """The tokens' keys and values, ``[N, h, L, dh]`` each (computed once for all label chunks)."""
        n, length, _ = tokens.shape
        h, dh = self.num_heads, self.head_dim
        key = self.k_proj(tokens).view(n, length, h, dh).transpose(1, 2)
        value = self.v_proj(tokens).view(n, length, h, dh).transpose(1, 2)
        return key, value

    def attend(self, queries: Tensor, key: Tensor, value: Tensor) -> Tensor:
        """`forward` from given keys and values: ``[q, d]`` queries -> ``[N, q, d]``."""
        n, h, _, dh = key.shape
        q = queries.shape[0]
        # [q, d] -> [1, h, q, dh]; expand is a view, so the projection is paid once, not N times.
        query = self.q_proj(queries).view(q, h, dh).transpose(0, 1).unsqueeze(0).expand(n, h, q, dh)
        out = F.scaled_dot_product_attention(
            query, key, value, dropout_p=self.dropout if self.training else 0.0
        )  # [N, h, q, dh]
        return self.out_proj(out.transpose(1, 2).reshape(n, q, h * dh))


class LabelWiseHead(nn.Module):
    """ML-Decoder-style head producing label-wise embeddings and logits (method.md §4).

    Args:
        in_features: channels ``C_in`` of the backbone's final feature map (one token per position).
        num_classes: number of labels ``q``.
        embed_dim: embedding width ``d``.
        num_heads: attention heads of the cross-attention.
        ffn_dim: hidden width of the feed-forward block.
        dropout: dropout after the attention and in/after the feed-forward block.
        learn_queries: if False (default, as the reference), the queries are a random, frozen buffer;
            if True, they are an `nn.Parameter` trained with the rest of the head. Both are stored
            under the same state-dict key ``queries``, so checkpoints load either way.
        chunk_labels: with more labels than this, the decoder layer runs on chunks of this many
            labels (the tokens' keys and values computed once for all of them); under autograd each
            chunk is recomputed in backward (activation checkpointing),
            so only the chunk's ``[N, chunk, ffn_dim]`` activations are alive at once instead of the
            whole ``[N, q, ffn_dim]`` (5 GiB at q = 9600, N = 8). Values and gradients equal the
            unchunked layer's; in training, dropout draws its masks chunk by chunk. ``None``
            (default): chunks of 256 labels above 2048 labels, where the activations' memory traffic
            outweighs the recomputation (at q = 1000 the recomputation would make a step 1.4× slower;
            docs/benchmarks.md).
    """

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        embed_dim: int = 768,
        num_heads: int = 8,
        ffn_dim: int = 2048,
        dropout: float = 0.1,
        learn_queries: bool = False,
        chunk_labels: int | None = None,
    ) -> None:
        super().__init__()
        for label, value in (("in_features", in_features), ("num_classes", num_classes),
                             ("embed_dim", embed_dim), ("num_heads", num_heads), ("ffn_dim", ffn_dim),
                             ("chunk_labels", 1 if chunk_labels is None else chunk_labels)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{label} must be a positive integer, got {value!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
        self.num_classes = num_classes
        self.embed_dim = embed_dim
        if chunk_labels is None:
            chunk_labels = AUTO_CHUNK_LABELS if num_classes > AUTO_CHUNK_ABOVE else num_classes
        self.chunk_labels = chunk_labels
        self.token_proj = nn.Linear(in_features, embed_dim)
        queries = torch.randn(num_classes, embed_dim)  # N(0, 1), like the reference's nn.Embedding
        if learn_queries:
            self.queries = nn.Parameter(queries)
        else:
            self.register_buffer("queries", queries)
        self.cross_attn = LabelCrossAttention(embed_dim, num_heads, dropout)
        self.dropout1 = nn.Dropout(dropout)
        self.norm1 = nn.LayerNorm(embed_dim)
        self.ffn = nn.Sequential(
            nn.Linear(embed_dim, ffn_dim),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(ffn_dim, embed_dim),
        )
        self.dropout2 = nn.Dropout(dropout)
        self.norm2 = nn.LayerNorm(embed_dim)
        # Group FC: one weight vector and bias per label. Initialised like nn.Linear(d, 1) per label so
        # the logit scale does not depend on q (a fan-in/fan-out rule over [q, d] would shrink with q).
        bound = 1.0 / math.sqrt(embed_dim)
        self.label_weight = nn.Parameter(torch.empty(num_classes, embed_dim).uniform_(-bound, bound))
        self.label_bias = nn.Parameter(torch.zeros(num_classes))

    def embed(self, tokens: Tensor) -> Tensor:
        """Label-wise embeddings of a batch of token sets.

        Args:
            tokens: ``[N, L, C_in]`` backbone tokens.

        Returns:
            ``[N, q, d]`` label-wise embeddings.
        """
        memory = F.relu(self.token_proj(tokens))  # [N, L, d]
        key, value = self.cross_attn.keys_values(memory)  # shared by every label chunk
        if self.num_classes <= self.chunk_labels:
            return self._decode(self.queries, key, value)
        parts = []
        for start in range(0, self.num_classes, self.chunk_labels):
            queries = self.queries[start:start + self.chunk_labels]
            if torch.is_grad_enabled():
                # Keep only the chunk's inputs; its activations are recomputed in backward.
                parts.append(checkpoint(self._decode, queries, key, value, use_reentrant=False))
            else:
                parts.append(self._decode(queries, key, value))
        return torch.cat(parts, dim=1)

    def _decode(self, queries: Tensor, key: Tensor, value: Tensor) -> Tensor:
        """The decoder layer for some labels: ``[k, d]`` queries -> ``[N, k, d]``."""
        x = self.norm1(queries + self.dropout1(self.cross_attn.attend(queries, key, value)))  # [N, k, d]
        return self.norm2(x + self.dropout2(self.ffn(x)))

    def logits(self, embeddings: Tensor) -> Tensor:
        """Per-label read-out ``z_nk = <e_nk, w_k> + b_k``.

        Args:
            embeddings: ``[N, q, d]`` label-wise embeddings.

        Returns:
            ``[N, q]`` logits.
        """
        return torch.einsum("nqd,qd->nq", embeddings, self.label_weight) + self.label_bias

    def forward(self, tokens: Tensor) -> tuple[Tensor, Tensor]:
        """Embeddings and logits of a batch of token sets.

        Args:
            tokens: ``[N, L, C_in]`` backbone tokens.

        Returns:
            ``(embeddings [N, q, d], logits [N, q])``.
        """
        embeddings = self.embed(tokens)
        return embeddings, self.logits(embeddings)
