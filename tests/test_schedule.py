"""The OneCycle schedule of any length (mlkd.engine.schedule): torch's where it works, ours where it cannot."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image
from torch.optim.lr_scheduler import OneCycleLR

from mlkd.cli import main
from mlkd.config import RunConfig
from mlkd.engine.checkpoint import load_checkpoint, save_checkpoint
from mlkd.engine.preflight import check_schedule
from mlkd.engine.schedule import OneCycle, build_schedule, torch_can_build

MAX_LR = 3e-3
FINAL_LR = MAX_LR / 25 / 1e4
# 1 - 2**-53 is the largest warm-up below 1: the annealing phase is then as short as it gets.
WARMUPS = (0.0, 0.05, 0.1, 0.2, 0.25, 1 / 3, 0.5, 0.7, 0.9, 1 - 2 ** -53)


def _adam(groups: int = 1) -> torch.optim.Adam:
    """Adam over ``groups`` param groups, as `build_optimizer` makes them (one with weight decay, one without)."""
    params = [{"params": [torch.nn.Parameter(torch.zeros(2))], "weight_decay": 1e-4 * (g == 0)} for g in range(groups)]
    return torch.optim.Adam(params, lr=MAX_LR)


def _trace(optimizer, scheduler, steps: int) -> list[tuple]:
    """(lr of each group, beta1 of each group) before each of ``steps`` optimizer steps and after the last."""
    def now():
        return tuple(scheduler.get_last_lr()), tuple(g["betas"][0] if "betas" in g else g["momentum"]
                                                     for g in optimizer.param_groups)
    seen = [now()]
    for _ in range(steps):
        optimizer.step()
        scheduler.step()
        seen.append(now())
    return seen


def test_torch_fails_exactly_where_predicted():
    """The survey: torch's class raises for a schedule iff its warm-up is exactly one step (w * T == 1.0)."""
    failing = []
    for warmup in WARMUPS:
        for total in range(1, 51):
            optimizer = _adam()
            try:
                _trace(optimizer, OneCycleLR(optimizer, max_lr=MAX_LR, total_steps=total, pct_start=warmup), total)
                failed = False
            except ZeroDivisionError:
                failed = True
            assert failed is not torch_can_build(total, warmup), (total, warmup)
            if failed:
                failing.append((total, warmup))
    assert (5, 0.2) in failing and (2, 0.5) in failing and all(float(w * t) == 1.0 for t, w in failing)


@pytest.mark.parametrize("warmup", [0.0, 0.2, 0.5])
def test_every_length_has_a_schedule(warmup):
    for total in range(1, 51):
        optimizer = _adam()
        lrs = [lr for (lr,), _ in _trace(optimizer, build_schedule(optimizer, MAX_LR, total, warmup), total)]
        used = lrs[:total]  # the last value comes after the last step and is never used
        assert all(math.isfinite(lr) and lr > 0 for lr in lrs), (total, lrs)
        assert used[-1] == FINAL_LR, (total, used)
        assert max(used) <= MAX_LR
        if float(warmup * total).is_integer() and warmup * total >= 1:
            # The warm-up ends on a step (a one-step warm-up: the first), which is at the peak.
            assert max(used) == MAX_LR, (total, used)
        else:
            # torch's phases end between steps (or the annealing starts before step 0, as at warm-up 0);
            # the highest step is within one step of the peak.
            one_step = min(1.0, 1 / (total - warmup * total))
            assert max(used) >= FINAL_LR + (MAX_LR - FINAL_LR) / 2 * (math.cos(math.pi * one_step) + 1), (total, used)


def test_one_step_warmup_reaches_the_peak_at_once():
    optimizer = _adam()
    scheduler = build_schedule(optimizer, MAX_LR, 5, 0.2)
    assert isinstance(scheduler, OneCycle)
    trace = _trace(optimizer, scheduler, 5)
    assert trace[0] == ((MAX_LR,), (0.85,))  # the warm-up's end: the peak lr and the lowest beta1
    assert trace[4] == ((FINAL_LR,), (0.95,))
    lrs = [lr for (lr,), _ in trace[:5]]
    assert lrs == sorted(lrs, reverse=True)


def test_ours_equals_torch_bit_for_bit_where_torch_works():
    compared = 0
    for warmup in WARMUPS:
        for total in range(1, 51):
            if not torch_can_build(total, warmup):
                continue
            theirs, ours = _adam(2), _adam(2)
            torch_trace = _trace(theirs, OneCycleLR(theirs, max_lr=MAX_LR, total_steps=total, pct_start=warmup), total)
            assert _trace(ours, OneCycle(ours, MAX_LR, total, warmup), total) == torch_trace, (total, warmup)
            assert type(build_schedule(_adam(), MAX_LR, total, warmup)) is OneCycleLR  # runs keep torch's class
            compared += 1
    assert compared > 450


def test_momentum_is_cycled_like_torch_for_sgd():
    theirs = torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=MAX_LR, momentum=0.9)
    ours = torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=MAX_LR, momentum=0.9)
    expected = _trace(theirs, OneCycleLR(theirs, max_lr=MAX_LR, total_steps=12, pct_start=0.3), 12)
    assert _trace(ours, OneCycle(ours, MAX_LR, 12, 0.3), 12) == expected
    with pytest.raises(ValueError, match="no betas or momentum"):
        OneCycle(torch.optim.Adagrad([torch.nn.Parameter(torch.zeros(2))], lr=MAX_LR), MAX_LR, 12, 0.3)


def test_bad_lengths_are_refused():
    for total, warmup in [(0, 0.2), (2.0, 0.2), (5, 1.0), (5, -0.1)]:
        with pytest.raises(ValueError):
            build_schedule(_adam(), MAX_LR, total, warmup)


def test_resume_continues_a_fallback_schedule_identically(tmp_path):
    total, stop = 10, 4  # warm-up 0.1 of 10 steps: exactly one step
    optimizer = _adam(2)
    uninterrupted = _trace(optimizer, build_schedule(optimizer, MAX_LR, total, 0.1), total)

    optimizer = _adam(2)
    scheduler = build_schedule(optimizer, MAX_LR, total, 0.1)
    assert isinstance(scheduler, OneCycle)
    first = _trace(optimizer, scheduler, stop)
    # Through a weights-only checkpoint, in the trainer's order: schedule, then optimizer and schedule states.
    save_checkpoint({"model": {}, "model_args": {}, "optimizer": optimizer.state_dict(),
                     "scheduler": scheduler.state_dict()}, tmp_path / "last.pt")
    state = load_checkpoint(tmp_path / "last.pt")
    optimizer = _adam(2)
    scheduler = build_schedule(optimizer, MAX_LR, total, 0.1)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    assert first + _trace(optimizer, scheduler, total - stop)[1:] == uninterrupted


def _write_csv_set(root, n_train, n_test):
    """A csv data set of 8x8 PNGs: image i shows red and/or blue stripes, its labels."""
    rng = np.random.default_rng(0)
    (root / "img").mkdir(parents=True)
    lines = []
    for i in range(n_train + n_test):
        labels = [c for c in ("red", "blue") if rng.random() < 0.5] or ["red"]
        pixels = np.zeros((8, 8, 3), dtype=np.uint8)
        pixels[:4, :, 0] = 255 * ("red" in labels)
        pixels[4:, :, 2] = 255 * ("blue" in labels)
        Image.fromarray(pixels).save(root / "img" / f"{i}.png")
        lines.append(f"img/{i}.png,{'|'.join(labels)}")
    (root / "train.csv").write_text("image,labels\n" + "\n".join(lines[:n_train]) + "\n")
    (root / "test.csv").write_text("image,labels\n" + "\n".join(lines[n_train:]) + "\n")


def test_one_epoch_yaml_run_with_a_one_step_warmup_trains(tmp_path):
    """Issue 21: 86 training images in batches of 16 for one epoch are 5 steps; warm-up 0.2 is one step."""
    root = tmp_path / "data"
    _write_csv_set(root, 96, 8)  # a tenth (10 images) is carved for validation: 86 train
    config = tmp_path / "run.yaml"
    config.write_text(f"dataset: csv\ndata_root: {root}\nimg_size: 8\nbatch_size: 16\nepochs: 1\nwarmup: 0.2\n"
                      "model: tiny_cnn\nmodel_options: {embed_dim: 8, num_heads: 2, ffn_dim: 8}\naugment: false\n"
                      f"device: cpu\nquiet: true\ntensorboard: false\noutput: {tmp_path / 'out'}\n")
    cfg = RunConfig(batch_size=16, epochs=1, warmup=0.2)
    assert check_schedule(cfg, 86) == 5 and not torch_can_build(5, 0.2)  # the case torch cannot build
    assert main(["train", "--config", str(config)]) == 0
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert 0 <= metrics["mAP"] <= 100 and metrics["num_images"] == 8
    log = [json.loads(line) for line in (tmp_path / "out" / "log.jsonl").read_text().splitlines()]
    assert len(log) == 1 and math.isfinite(log[0]["lr"])
