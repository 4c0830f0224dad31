"""A label-wise head fitted to a frozen teacher that has none, so that LED (CD + ID) can distil from it.

LED needs the teacher's label-wise embeddings ``[N, q, d]``; a plain classifier (a timm model, any
``nn.Module`` giving logits) has none. `attach_fitted_head` gives it mlkd's `LabelWiseHead`, reading the
teacher's final feature map as tokens exactly as `MultiLabelModel` does, and fitted once:

1. the teacher runs once over the (un-augmented) training images; its final maps and logits are kept in
   host memory;
2. only the head is trained, for a few epochs (Adam, warm-up then cosine decay, fixed seed), to
   reproduce the teacher's **own** per-label probabilities: BCE with logits against ``sigmoid(teacher logits)``,
   which is the binary KL of MLD between the teacher and the head up to a constant. So the fitted
   embeddings are those a head reading this backbone needs to say what the teacher says, and the
   structure LED transfers is the teacher's, consistent with the logits MLD/KD transfer. Fitting the
   ground-truth labels instead would build embeddings of a different classifier (the head's own), whose
   mistakes and confidences are not the teacher's. docs/method.md gives the reasoning;
3. the agreement with the teacher (mean absolute difference of the probabilities, decisions at 0.5,
   AP of the head's scores against the teacher's decisions) is measured on held-out training images and
   reported in ``fitted_head_report``;
4. the head's weights and report are cached in ``cache_dir / f"{digest}.pt"``, ``digest`` a sha256 of
   the caller's key (teacher weights, classes, training images) and the fit settings: a later run with
   the same key reuses it without running the teacher over the data set.

The returned module is the teacher with the head attached: its logits and feature maps are the
teacher's own, its label-wise embeddings come from the fitted head.

Memory: the final maps are pooled to at most ``max_tokens`` positions (64 by default: an 8×8 grid;
a ResNet's 7×7 at 224 px is kept as is), and at most ``max_map_gib`` GiB of them are kept in float32
(2 by default: 5,300 images of 7×7×2048, 26,000 of 4×4×1280; `FIT_DEFAULTS`). Over that, the fit uses
a uniform random subset of the training images of that size, drawn with the fit's seed while the
teacher streams over all of them (reservoir sampling). The teacher runs once over every image either way.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mlkd.files import atomic_write, make_folder
from mlkd.metrics import average_precision_per_label
from mlkd.models.factory import default_head_dims
from mlkd.models.head import LabelWiseHead
from mlkd.outputs import ModelOutput

if TYPE_CHECKING:
    from mlkd.engine.evaluate import ModelInput

logger = logging.getLogger(__name__)

# Version of the cache file's layout; part of the digest, so that a new layout never reads an old file.
CACHE_FORMAT = 1
GIB = 1024**3

# The fit's settings; ``key["fitted_head"]`` (a dict) overrides any of them. ``None`` head sizes follow
# the backbone as `create_model` does (`default_head_dims`), so that a fitted head is the size of the
# head the same backbone would carry when trained by mlkd.
FIT_DEFAULTS: dict[str, Any] = {
    "embed_dim": None,
    "num_heads": None,
    "ffn_dim": None,
    "dropout": 0.1,
    "epochs": 10,
    "min_steps": 500,
    "lr": 1e-3,
    "batch_size": 64,
    "seed": 0,
    "holdout": 0.1,
    "max_tokens": 64,
    "max_map_gib": 2.0,
}


def pool_tokens(final_map: Tensor, max_tokens: int) -> Tensor:
    """The final map average-pooled to at most ``max_tokens`` positions, keeping its aspect ratio.

    Args:
        final_map: ``[N, C, H, W]`` the teacher's final feature map.
        max_tokens: the most positions (tokens) the head reads per image.

    Returns:
        ``[N, C, h, w]`` with ``h·w <= max_tokens``; the map itself when ``H·W <= max_tokens``.
    """
    h, w = final_map.shape[-2:]
    if h * w <= max_tokens:
        return final_map
    scale = math.sqrt(max_tokens / (h * w))
    return F.adaptive_avg_pool2d(final_map, (max(1, int(h * scale)), max(1, int(w * scale))))


def _tokens(maps: Tensor) -> Tensor:
    """``[N, C, H, W]`` maps -> ``[N, H·W, C]`` tokens, the order `MultiLabelModel` gives its head."""
    return maps.flatten(2).transpose(1, 2)


class FittedHeadTeacher(nn.Module):
    """A frozen teacher whose label-wise embeddings come from a fitted `LabelWiseHead`.

    Always in eval mode and without gradients: ``train()`` keeps it in eval mode, so the head's dropout
    never runs. The teacher's inference settings (``inference_settings`` of `load_teacher`, if any) are
    exposed unchanged, so `run_teacher` treats the wrapper as it treats the teacher.

    Args:
        teacher: the frozen teacher; ``teacher(x)`` returns a `ModelOutput` whose ``features[-1]`` is
            the final map ``[N, C, H, W]``.
        head: the fitted head reading ``C`` channels.
        max_tokens: the token bound the head was fitted with (`pool_tokens`).
        report: the fit's report (`attach_fitted_head`), kept as ``fitted_head_report``.

    Attributes:
        fitted_head_report: see `attach_fitted_head`.
        num_classes: labels ``q``; embed_dim: the head's width ``d``; in_chans: the teacher's input
            channels (3 unless it says otherwise).
    """

    def __init__(self, teacher: nn.Module, head: LabelWiseHead, max_tokens: int, report: dict[str, Any]) -> None:
        super().__init__()
        self.teacher = teacher
        self.head = head
        self.max_tokens = max_tokens
        self.fitted_head_report = report
        self.num_classes = head.num_classes
        self.embed_dim = head.embed_dim
        self.in_chans = getattr(teacher, "in_chans", 3)  # read by mlkd.models.cost for its example input
        if hasattr(teacher, "inference_settings"):
            self.inference_settings = teacher.inference_settings
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> "FittedHeadTeacher":
        """Stay in eval mode whatever ``mode`` says: a frozen teacher never runs dropout or updates
        batch-norm statistics."""
        return super().train(False)

    def forward(self, x: Tensor) -> ModelOutput:
        """The teacher's outputs with the fitted head's label-wise embeddings.

        Args:
            x: ``[N, 3, H, W]`` images as the teacher expects them.

        Returns:
            `ModelOutput`: the teacher's ``logits [N, q]`` and ``features``, and ``label_embeddings
            [N, q, d]`` from the fitted head.
        """
        out = self.teacher(x)
        final = _final_map(out)
        embeddings = self.head.embed(_tokens(pool_tokens(final, self.max_tokens)))
        return ModelOutput(logits=out.logits, label_embeddings=embeddings, features=out.features)


def _final_map(out: Any) -> Tensor:
    """The final map ``[N, C, H, W]`` of a teacher output, or a ValueError that says what is wrong."""
    if not isinstance(out, ModelOutput):
        raise TypeError(f"the teacher must return a mlkd ModelOutput (logits, features), got {type(out).__name__}")
    if not out.features:
        raise ValueError("the teacher returns no feature maps, so no label-wise head can be fitted to it; "
                         "give a teacher that returns its final feature map, or use a method without "
                         "label-wise embeddings (mld, kd)")
    final = out.features[-1]
    if final.ndim != 4:
        raise ValueError(f"the teacher's last feature map must be [N, C, H, W], got shape {tuple(final.shape)}")
    return final


def fit_label_head(maps: Tensor, teacher_logits: Tensor, *, embed_dim: int, num_heads: int, epochs: int,
                   lr: float, seed: int, ffn_dim: int | None = None, dropout: float = 0.1, batch_size: int = 64,
                   holdout: float = 0.1, min_steps: int = 0,
                   device: torch.device | None = None) -> tuple[LabelWiseHead, dict[str, Any]]:
    """Fit a `LabelWiseHead` on fixed feature maps to reproduce the teacher's probabilities.

    The loss is BCE with logits against ``sigmoid(teacher_logits)`` (mean over images and labels). A
    random ``holdout`` share of the images (drawn with ``seed``) is kept out of the fit to measure the
    agreement. The global random state is left as it was (the head is initialised in a forked RNG).

    Args:
        maps: ``[N, C, H, W]`` the teacher's final maps (each position is one token).
        teacher_logits: ``[N, q]`` the teacher's logits for the same images.
        embed_dim, num_heads: the head's width ``d`` and attention heads.
        epochs: passes over the fitted images (more when ``min_steps`` asks for more).
        lr: Adam's peak learning rate (linear warm-up over 10 % of the steps, then cosine decay).
        seed: seeds the head's initialisation, the hold-out draw and the batch order.
        ffn_dim: feed-forward width; ``None``: ``8d/3`` as `default_head_dims`.
        dropout: the head's dropout during the fit.
        batch_size: images per step.
        holdout: share of images held out (none when that is under one image).
        min_steps: run whole epochs until at least this many optimizer steps are done: on a small
            training set a few epochs are a few steps, too few to fit anything.
        device: where to fit; ``None``: the device of ``maps``.

    Returns:
        The fitted head (eval mode, on ``device``) and a report: ``images_fit``, ``images_heldout``,
        ``epochs`` and ``steps`` (as run), ``final_loss`` (mean fit loss of the last epoch), and per split (``fit`` and
        ``heldout``, None without held-out images) ``mean_abs_prob_diff`` (mean |σ(head) − σ(teacher)|),
        ``decision_agreement`` (share of (image, label) pairs on the same side of 0.5), ``map_vs_teacher``
        (mAP of the head's scores against the teacher's decisions at 0.5, over labels the teacher calls
        at least once; None when it calls none) and ``baseline_mean_abs_prob_diff`` (the same difference
        for a constant per-label prediction, the fitted images' mean teacher probability: what a head
        ignoring the image would reach).

    Raises:
        ValueError: shapes that do not match, fewer than 2 images, or settings out of range.
    """
    if maps.ndim != 4 or teacher_logits.ndim != 2 or maps.shape[0] != teacher_logits.shape[0]:
        raise ValueError(f"expected maps [N, C, H, W] and teacher_logits [N, q] for the same N, got "
                         f"{tuple(maps.shape)} and {tuple(teacher_logits.shape)}")
    n = maps.shape[0]
    if n < 2:
        raise ValueError(f"a label-wise head needs at least 2 training images to be fitted, got {n}")
    if not isinstance(epochs, int) or epochs < 1 or not lr > 0 or not 0 <= holdout < 1 or batch_size < 1:
        raise ValueError(f"invalid fit settings: epochs={epochs!r} (>= 1), lr={lr!r} (> 0), "
                         f"holdout={holdout!r} (in [0, 1)), batch_size={batch_size!r} (>= 1)")
    device = maps.device if device is None else device
    ffn_dim = int(round(8 * embed_dim / 3)) if ffn_dim is None else ffn_dim
    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(n, generator=gen)
    n_hold = int(holdout * n)
    fit_idx, hold_idx = order[n_hold:], order[:n_hold]
    probs = torch.sigmoid(teacher_logits.float())
    steps_per_epoch = math.ceil(len(fit_idx) / batch_size)
    epochs = max(epochs, math.ceil(min_steps / steps_per_epoch))
    # A forked RNG: the head's initialisation and dropout depend on ``seed`` alone, and the caller's
    # random stream (the student's initialisation) is not shifted by the fit.
    cuda = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):
        torch.manual_seed(seed)
        head = LabelWiseHead(maps.shape[1], teacher_logits.shape[1], embed_dim=embed_dim, num_heads=num_heads,
                             ffn_dim=ffn_dim, dropout=dropout).to(device)
        optimizer = torch.optim.Adam(head.parameters(), lr=lr)
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, _warmup_cosine(epochs * steps_per_epoch))
        head.train()
        for _ in range(epochs):
            total = 0.0
            for batch in fit_idx[torch.randperm(len(fit_idx), generator=gen)].split(batch_size):
                _, logits = head(_tokens(maps[batch].to(device).float()))
                loss = F.binary_cross_entropy_with_logits(logits, probs[batch].to(device))
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()
                total += float(loss.detach()) * len(batch)
    head.zero_grad(set_to_none=True)  # the last step's gradients would stay with the frozen head
    head.eval().requires_grad_(False)
    fitted = _predict(head, maps[fit_idx], batch_size, device)
    constant = probs[fit_idx].mean(0, keepdim=True)
    report: dict[str, Any] = {
        "images_fit": len(fit_idx), "images_heldout": n_hold, "epochs": epochs, "steps": epochs * steps_per_epoch,
        "final_loss": total / len(fit_idx),
        "fit": _agreement(fitted, probs[fit_idx], constant),
        "heldout": None if n_hold == 0 else _agreement(_predict(head, maps[hold_idx], batch_size, device),
                                                       probs[hold_idx], constant),
    }
    return head, report


def _warmup_cosine(total: int) -> Callable[[int], float]:
    """The lr factor of step ``t`` of ``total``: linear warm-up over the first 10 % (at least one step),
    then a cosine decay towards 0. Defined for any ``total >= 1`` (torch's OneCycleLR divides by zero
    when the warm-up rounds to no step)."""
    warm = max(1, math.ceil(0.1 * total))

    def factor(t: int) -> float:
        if t < warm:
            return (t + 1) / warm
        return 0.5 * (1 + math.cos(math.pi * (t - warm) / max(1, total - warm)))

    return factor


@torch.no_grad()
def _predict(head: LabelWiseHead, maps: Tensor, batch_size: int, device: torch.device) -> Tensor:
    """The head's probabilities ``[n, q]`` (on the CPU) for ``maps [n, C, H, W]``."""
    return torch.cat([torch.sigmoid(head(_tokens(m.to(device).float()))[1]).cpu() for m in maps.split(batch_size)])


def _agreement(head_probs: Tensor, teacher_probs: Tensor, constant: Tensor) -> dict[str, float | None]:
    """How close the head's probabilities ``[n, q]`` are to the teacher's (see `fit_label_head`)."""
    teacher_probs = teacher_probs.cpu()
    decisions = (teacher_probs >= 0.5).numpy()
    ap = average_precision_per_label(head_probs.double().numpy(), decisions)
    return {
        "mean_abs_prob_diff": float((head_probs - teacher_probs).abs().mean()),
        "decision_agreement": float(((head_probs >= 0.5) == (teacher_probs >= 0.5)).float().mean()),
        "map_vs_teacher": None if np.isnan(ap).all() else float(np.nanmean(ap)),
        "baseline_mean_abs_prob_diff": float((constant.cpu() - teacher_probs).abs().mean()),
    }


def state_digest(module: nn.Module) -> str:
    """A sha256 of a module's state dict (names, dtypes, shapes, values): a key for a teacher given as a module.

    Args:
        module: any module (its parameters and buffers are read, never changed).

    Returns:
        64 hexadecimal characters.
    """
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _settings(key: dict[str, Any]) -> dict[str, Any]:
    """`FIT_DEFAULTS` with the overrides of ``key["fitted_head"]``; unknown names are refused."""
    overrides = key.get("fitted_head") or {}
    if not isinstance(overrides, dict) or set(overrides) - set(FIT_DEFAULTS):
        unknown = sorted(set(overrides) - set(FIT_DEFAULTS)) if isinstance(overrides, dict) else overrides
        raise ValueError(f"unknown fitted-head settings {unknown!r}; valid: {', '.join(FIT_DEFAULTS)}")
    settings = {**FIT_DEFAULTS, **overrides}
    for name in ("max_tokens", "max_map_gib"):
        value = settings[name]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            raise ValueError(f"the fitted-head setting {name} must be a positive number, got {value!r}")
    return settings


def _key_text(key: dict[str, Any], settings: dict[str, Any]) -> str:
    """The canonical JSON of everything the fitted head depends on (what the digest hashes)."""
    def plain(value: Any) -> str:
        if isinstance(value, Path):
            return os.fspath(value)
        raise TypeError(f"the fitted-head cache key must hold JSON values (str, numbers, lists, dicts), got "
                        f"{type(value).__name__}: {value!r}")

    return json.dumps({"format": CACHE_FORMAT, "key": key, "settings": settings}, sort_keys=True,
                      separators=(",", ":"), default=plain)


def _load_cached(path: Path, key_text: str, device: torch.device) -> tuple[LabelWiseHead, dict[str, Any]] | None:
    """The head and report cached in ``path``, or None (with a warning) when it is missing or unusable."""
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(state, dict) or state.get("key") != key_text:
            raise ValueError("it was written for another teacher, data set or settings")
        head = LabelWiseHead(**state["head_args"])
        head.load_state_dict(state["head"])
        report = dict(state["report"])
    except Exception as err:  # a truncated, foreign or edited file: refitting is always possible
        logger.warning("the fitted-head cache %s cannot be used (%s: %s); fitting the head again",
                       path, type(err).__name__, str(err).strip().splitlines()[-1] if str(err).strip() else "")
        return None
    return head.to(device).eval().requires_grad_(False), report


@torch.no_grad()
def _collect(teacher: nn.Module, batches: Iterable[tuple[Tensor, Tensor]], teacher_input: "ModelInput",
             device: torch.device, max_tokens: int, max_map_gib: float, seed: int,
             run: Callable[[nn.Module, Tensor], ModelOutput]) -> tuple[Tensor, Tensor, int]:
    """The teacher's pooled final maps and logits over the training images, bounded in memory.

    Keeps every image while the maps fit in ``max_map_gib``; beyond that a uniform random subset of
    that many images (reservoir sampling with ``seed``, so it does not depend on the batch size).

    Returns:
        ``maps [n, C, h, w]`` and ``logits [n, q]`` (float32, CPU) and the number of images seen.
    """
    gen = torch.Generator().manual_seed(seed)
    maps: list[Tensor] = []
    logits: list[Tensor] = []
    store: tuple[Tensor, Tensor] | None = None  # the reservoir, once full
    capacity, seen = 0, 0
    for batch in batches:
        images = batch[0].to(device)
        out = run(teacher, teacher_input(images))
        if out.label_embeddings is not None:
            raise ValueError("this teacher has label-wise embeddings of its own; use them instead of a fitted head")
        m = pool_tokens(_final_map(out), max_tokens).float().cpu()
        z = out.logits.float().cpu()
        if not capacity:
            capacity = max(2, int(max_map_gib * GIB // (m[0].numel() * 4)))
        take = 0
        if store is None:
            take = min(len(m), capacity - seen)
            maps.append(m[:take])
            logits.append(z[:take])
            seen += take
            if take < len(m):
                store = torch.cat(maps), torch.cat(logits)
        for j in range(take, len(m)):
            slot = int(torch.randint(seen + 1, (1,), generator=gen))
            if slot < capacity:
                store[0][slot], store[1][slot] = m[j], z[j]
            seen += 1
    if not seen:
        raise ValueError("the training loader gave no images to fit the label-wise head on")
    if store is None:
        store = torch.cat(maps), torch.cat(logits)
    else:
        logger.info("fitted head: the teacher's maps of %d training images exceed %g GiB; fitting on a random "
                    "subset of %d", seen, max_map_gib, capacity)
    return store[0], store[1], seen


def attach_fitted_head(teacher: nn.Module, train_loader_factory: Callable[[], Iterable[tuple[Tensor, Tensor]]],
                       teacher_input: "ModelInput", cache_dir: Path, key: dict, device: torch.device,
                       run: Callable[[nn.Module, Tensor], ModelOutput] | None = None) -> nn.Module:
    """Give a frozen teacher without a label-wise head one, fitted to its own logits (or reused from the cache).

    Args:
        teacher: the frozen teacher on ``device``; ``teacher(x)`` returns a `ModelOutput` with ``logits
            [N, q]`` (in the data set's classes), ``label_embeddings=None`` and ``features`` ending with
            the final map ``[N, C, H, W]``.
        train_loader_factory: called (only when fitting) for the training images at the student's
            transform without augmentation, as ``(images [B, 3, H, W], targets [B, q])`` batches in a fixed
            order (the targets are not used: the head fits the teacher).
        teacher_input: the teacher's resizing and normalisation, applied to each batch before it.
        cache_dir: folder of the cache file ``{digest}.pt`` (created when needed).
        key: JSON values identifying the teacher's weights, its classes and the training images (e.g. a
            weights file's sha256 or `state_digest`, the class list, the data set's name, root and a
            fingerprint of its training image ids). An optional ``key["fitted_head"]`` dict overrides
            `FIT_DEFAULTS`. The digest covers the key and the resolved settings.
        device: where the teacher runs and the head is fitted.
        run: how to call the teacher on a batch, ``run(teacher, images) -> ModelOutput``; the engine passes
            `mlkd.engine.teacher.run_teacher`, which applies the teacher's inference settings (bf16, ...).
            ``None``: ``teacher(images)``. A parameter rather than an import, so that mlkd.models does not
            import mlkd.engine (which imports mlkd.models).

    Returns:
        A `FittedHeadTeacher`: frozen, in eval mode; ``forward(x)`` returns the teacher's logits and
        features with ``label_embeddings [N, q, d]`` from the head. Its ``fitted_head_report`` holds
        ``path`` (the cache file), ``reused`` (read from the cache), ``cache_written``, ``sources`` (which
        output comes from where), ``settings``, ``head`` (in_features, num_classes, embed_dim, num_heads,
        ffn_dim), ``images_seen``, ``fit_seconds`` and the agreement report of `fit_label_head`.

    Raises:
        TypeError: the key holds values that are not JSON.
        ValueError: unknown settings, or a teacher whose outputs cannot carry a fitted head.
    """
    settings = _settings(key)
    key_text = _key_text(key, settings)
    path = Path(cache_dir) / f"{hashlib.sha256(key_text.encode()).hexdigest()}.pt"
    cached = _load_cached(path, key_text, device)
    if cached is not None:
        head, report = cached
        report.update(path=str(path), reused=True, cache_written=False)
        logger.info("fitted head: reusing %s", path)
        return FittedHeadTeacher(teacher, head, settings["max_tokens"], report)

    start = time.perf_counter()
    teacher.eval()
    maps, logits, seen = _collect(teacher, train_loader_factory(), teacher_input, device, settings["max_tokens"],
                                  settings["max_map_gib"], settings["seed"],
                                  run or (lambda module, images: module(images)))
    embed_dim, num_heads, ffn_dim = default_head_dims(
        sum(p.numel() for p in teacher.parameters()), maps.shape[1], logits.shape[1],
        settings["embed_dim"], settings["num_heads"], settings["ffn_dim"])
    head, fit = fit_label_head(maps, logits, embed_dim=embed_dim, num_heads=num_heads, ffn_dim=ffn_dim,
                               epochs=settings["epochs"], lr=settings["lr"], seed=settings["seed"],
                               dropout=settings["dropout"], batch_size=settings["batch_size"],
                               holdout=settings["holdout"], min_steps=settings["min_steps"], device=device)
    head_args = {"in_features": maps.shape[1], "num_classes": logits.shape[1], "embed_dim": embed_dim,
                 "num_heads": num_heads, "ffn_dim": ffn_dim, "dropout": settings["dropout"]}
    report = {**fit, "sources": {"logits": "teacher", "features": "teacher", "label_embeddings": "fitted head"},
              "settings": settings, "head": head_args, "images_seen": seen,
              "fit_seconds": time.perf_counter() - start}
    held = fit["heldout"] or fit["fit"]
    logger.info("fitted head: d=%d on %d images in %.1f s; %s mean |p_head - p_teacher| %.4f (a constant: %.4f), "
                "decisions agree %.1f %%", embed_dim, fit["images_fit"], report["fit_seconds"],
                "held-out" if fit["heldout"] else "fitted", held["mean_abs_prob_diff"],
                held["baseline_mean_abs_prob_diff"], 100 * held["decision_agreement"])
    state = {"format": CACHE_FORMAT, "key": key_text, "head_args": head_args,
             "head": {k: v.cpu() for k, v in head.state_dict().items()}, "report": report}
    try:
        make_folder(path.parent)
        atomic_write(path, lambda f: torch.save(state, f))
        written = True
    except OSError as err:  # the head is fitted; only the next run loses the cache
        logger.warning("fitted head: could not write its cache (%s); the next run will fit it again", err)
        written = False
    report = {**report, "path": str(path), "reused": False, "cache_written": written}
    return FittedHeadTeacher(teacher, head, settings["max_tokens"], report)
