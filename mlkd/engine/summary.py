"""The summary a run prints before it trains: data, models and their cost, method, device, schedule and
the estimated duration, with a loud warning when a CPU run would take hours.

The duration comes from timing real training steps (teacher forward, student forward and backward) on
a throw-away copy of the student and distiller, with the random number generators restored afterwards,
so the run itself computes exactly what it would have computed without the summary.
"""
from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import nn

from mlkd.config import RunConfig
from mlkd.engine import distributed as ddp
from mlkd.engine.fit import fit_lines
from mlkd.engine.threads import ThreadChoice
from mlkd.models.cost import describe_cost, model_cost

log = logging.getLogger("mlkd")

# A CPU run estimated to take longer than this gets the warning with smaller settings.
LONG_RUN_SECONDS = 2 * 3600
# Images per timed step on the CPU (per-image time there hardly depends on the batch size beyond a few
# images, and a full batch of a large model can take a minute); on a GPU the run's own batch is timed.
CPU_PROBE_IMAGES = 16


@dataclass(frozen=True)
class StepTimes:
    """Measured seconds per image: ``teacher`` forward (0 without a teacher), one training step of the
    student with its loss (``train``: forward, loss, backward), and the student's evaluation forward."""

    teacher: float
    train: float
    eval: float
    images: int  # images per timed step


@dataclass(frozen=True)
class RunEstimate:
    """Estimated seconds of the first epoch, of each later one, and of the whole remaining run."""

    first_epoch: float
    later_epoch: float
    total: float


def time_steps(step_module: nn.Module, teacher: nn.Module | None, teacher_input: nn.Module,
               student_input: nn.Module, device: torch.device, amp_dtype: torch.dtype | None,
               img_size: int, num_classes: int, images: int) -> StepTimes:
    """Time a training step and an evaluation forward on random images, after one warm-up of each.

    Args:
        step_module: the run's ``TrainStep`` (``.student``, ``.distiller``); a deep copy is timed, so the
            run's weights, statistics and gradients stay untouched.
        teacher: the frozen teacher or None; teacher_input, student_input: each model's `ModelInput`.
        images: images per timed step ``[images, 3, img_size, img_size]``.

    Returns:
        Seconds per image of each part.
    """
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        probe = copy.deepcopy(step_module).train()
        x = torch.rand(images, probe.student.in_chans, img_size, img_size, device=device)
        y = (torch.rand(images, num_classes, device=device) < 0.5).float()
        s_in, t_in = student_input.to(device), teacher_input.to(device)

        def sync() -> None:
            if device.type == "cuda":
                torch.cuda.synchronize(device)

        def teacher_step():
            # `forward`, not the call: hooks on the run's teacher (counting, tracing) must not see the probe.
            with torch.no_grad(), torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                return teacher.forward(t_in(x)) if teacher is not None else None

        def train_step(t_out) -> None:
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                total, _ = probe(s_in(x), t_out, y)
            total.backward()
            probe.zero_grad(set_to_none=True)

        def eval_step() -> None:
            with torch.no_grad(), torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                probe.student.forward_logits(s_in(x))

        def timed(fn, *args):
            fn(*args)  # warm-up: allocations, kernel selection
            sync()
            t0 = time.perf_counter()
            out = fn(*args)
            sync()
            return time.perf_counter() - t0, out

        t_teacher, t_out = timed(teacher_step)
        t_train, _ = timed(train_step, t_out)
        probe.eval()
        t_eval, _ = timed(eval_step)
    return StepTimes(teacher=t_teacher / images if teacher is not None else 0.0, train=t_train / images,
                     eval=t_eval / images, images=images)


def estimate_run(times: StepTimes, train_images: int, val_images: int, test_images: int, epochs: int,
                 cached_teacher: bool) -> RunEstimate:
    """Seconds of an epoch (training images, then validation) and of ``epochs`` epochs plus the test.

    With ``cached_teacher`` the teacher runs in the first epoch only.
    """
    val = val_images * times.eval
    first = train_images * (times.train + times.teacher) + val
    later = train_images * (times.train + (0.0 if cached_teacher else times.teacher)) + val
    total = (first + later * (epochs - 1) if epochs > 0 else 0.0) + test_images * times.eval
    return RunEstimate(first, later, total)


def duration(seconds: float) -> str:
    """``3725 -> "1 h 2 min"``, ``95 -> "1 min 35 s"``, ``4.2 -> "4.2 s"``."""
    if seconds < 10:
        return f"{seconds:.2g} s" if seconds >= 0.1 else "< 0.1 s"
    s = int(round(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60} s"
    return f"{s // 3600} h {s % 3600 // 60} min"


def long_run_advice(cfg: RunConfig, estimate: RunEstimate, epochs: int) -> list[str]:
    """Concrete smaller settings for a run estimated to take longer than `LONG_RUN_SECONDS`."""
    tips = []
    smaller = []
    if cfg.model not in ("tiny_cnn", "small_cnn") and not (cfg.weights or cfg.pretrained):
        smaller.append("--model small_cnn")  # a from-scratch large backbone is slow and underfits small data
    if cfg.img_size > 64:
        smaller.append("--img-size 64")
    if smaller:
        tips.append(" ".join(smaller) + " (a small model trained from scratch at low resolution)")
    fit_epochs = int(LONG_RUN_SECONDS // max(estimate.later_epoch, 1e-9))
    if 1 <= fit_epochs < epochs:
        tips.append(f"--epochs {fit_epochs} (about {duration(LONG_RUN_SECONDS)} at this speed)")
    if not torch.cuda.is_available():
        tips.append("a machine with a GPU (--device cuda)")
    return tips


def summarize_run(cfg: RunConfig, info: ddp.DistInfo, device: torch.device, threads: ThreadChoice,
                  datasets: Sequence[Any], step_module: nn.Module, teacher: nn.Module | None,
                  teacher_input: nn.Module, student_input: nn.Module, amp_dtype: torch.dtype | None,
                  steps_per_epoch: int, start_epoch: int, teacher_facts: dict[str, Any] | None = None) -> dict[str, Any]:
    """Log the run's summary (main process, unless ``cfg.quiet``) and warn about very long CPU runs.

    Args:
        datasets: the training, validation and test sets.
        step_module: the run's ``TrainStep`` (not wrapped in DDP).
        steps_per_epoch: training batches per epoch and process.
        start_epoch: epochs already done (a resumed run).
        teacher_facts: `mlkd.engine.teacher.TeacherSetup.facts`: what the teacher is, its classes and
            input and where they came from, and where each distillation term's teacher signal comes from
            (``term_sources``: the teacher as given, or a fitted head).

    Returns:
        What metrics.json records about the run: ``cost`` (parameters and MACs of the student's and the
        teacher's backbone and head, see `mlkd.models.cost.model_cost`), ``threads`` and, with a teacher,
        ``teacher`` (``teacher_facts``).
    """
    student = step_module.student
    teacher_size = getattr(teacher_input, "size", None) or cfg.img_size
    costs = {"student": model_cost(student, cfg.img_size).to_dict(),
             "teacher": model_cost(teacher, teacher_size).to_dict() if teacher is not None else None}
    facts = {"cost": costs, "threads": threads.threads}
    if teacher_facts is not None:
        facts["teacher"] = teacher_facts
    if not info.is_main:
        return facts
    train_set, val_set, test_set = datasets
    epochs_left = cfg.epochs - start_epoch
    estimate = None
    if not info.enabled and epochs_left > 0:
        images = cfg.batch_size if device.type == "cuda" else min(cfg.batch_size, CPU_PROBE_IMAGES)
        times = time_steps(step_module, teacher, teacher_input, student_input, device, amp_dtype,
                           cfg.read_size or cfg.img_size,
                           len(train_set.classes), images)
        estimate = estimate_run(times, steps_per_epoch * cfg.batch_size, len(val_set), len(test_set), epochs_left,
                                cached_teacher=cfg.cache_teacher and teacher is not None)
    if not cfg.quiet:
        log.info("\n".join(_summary_lines(cfg, info, device, threads, datasets, step_module, teacher, teacher_size,
                                          costs, amp_dtype, steps_per_epoch, start_epoch, estimate, teacher_facts)))
    if estimate is not None and device.type == "cpu" and estimate.total > LONG_RUN_SECONDS:
        tips = long_run_advice(cfg, estimate, epochs_left)
        bar = "!" * 78
        log.warning("\n".join([
            bar,
            f"!! This run is estimated to take {duration(estimate.total)} on the CPU "
            f"({duration(estimate.later_epoch)} per epoch × {epochs_left} epochs): {cfg.model} at {cfg.img_size} px, "
            f"{_weights_text(cfg)}.",
            "!! Smaller settings to try first:",
            *[f"!!   {tip}" for tip in tips],
            bar]))
    return facts


def teacher_lines(facts: dict[str, Any], size: int, cached: bool) -> list[str]:
    """The summary's lines about the teacher: what it is, its classes, its input and where each setting came
    from, and where each distillation term's teacher signal comes from."""
    lines = [f"  teacher   {facts['description']} at {size} px, frozen" + (", outputs cached" if cached else "")]
    classes = facts.get("classes")
    if classes:
        text = f"classes: {classes['teacher']} from {classes['from']}; {classes['used']} taught by name"
        if classes.get("unused"):
            text += f", {classes['unused']} not in the data set (ignored)"
        if classes.get("excluded"):
            shown = ", ".join(classes["excluded"][:8]) + (" ..." if len(classes["excluded"]) > 8 else "")
            text += f"; {len(classes['excluded'])} excluded from distillation (BCE only): {shown}"
        lines.append(f"            {text}")
    given = facts.get("input") or {}
    source = given.get("source") or {}
    if given.get("mean") is not None:
        norm = f"mean {_numbers(given['mean'])} std {_numbers(given['std'])}"
    else:
        norm = "no normalisation"
    if source:
        lines.append(f"            input: {given.get('img_size')} px ({source.get('img_size', '?')}); {norm} "
                     f"({source.get('mean_std', '?')})")
    by_source: dict[str, list[str]] = {}
    for term, where in (facts.get("term_sources") or {}).items():
        by_source.setdefault(where, []).append(term)
    for where, terms in by_source.items():
        lines.append(f"            {', '.join(terms)}: {where}")
    return lines + fit_lines(facts.get("fit"), facts.get("fold_fit"))


def _numbers(values: Sequence[float]) -> str:
    return "(" + ", ".join(f"{v:.4g}" for v in values) + ")"


def _weights_text(cfg: RunConfig) -> str:
    if cfg.weights:
        return f"weights {cfg.weights}"
    if cfg.pretrained:
        return "timm's pretrained weights"
    return "from scratch (no pretrained weights)"


def method_text(distiller: nn.Module, method: str) -> str:
    """The run's objective with its resolved weights and options, as the summary prints it and checkpoints record it."""
    if hasattr(distiller, "describe"):
        return f"{method}: {distiller.describe()}"
    if method == "vanilla":
        return "vanilla: BCE only, no distillation"
    weights = {k: v for k, v in vars(distiller).items()
               if (k.startswith("lambda") or k in ("temperature", "bce_weight")) and isinstance(v, (int, float))}
    return f"{method}: BCE + weighted distillation terms ({', '.join(f'{k}={v:g}' for k, v in weights.items())})"


def _summary_lines(cfg: RunConfig, info: ddp.DistInfo, device: torch.device, threads: ThreadChoice,
                   datasets: Sequence[Any], step_module: nn.Module, teacher: nn.Module | None, teacher_size: int,
                   costs: dict[str, Any], amp_dtype: torch.dtype | None, steps_per_epoch: int, start_epoch: int,
                   estimate: RunEstimate | None, teacher_facts: dict[str, Any] | None = None) -> list[str]:
    train_set, val_set, test_set = datasets
    classes = train_set.classes
    val_from = (f"{cfg.val_split!r} split" if cfg.val_split is not None
                else f"{cfg.val_fraction:.0%} carved from {cfg.train_split!r}")
    where = f" at {cfg.data_root}" if cfg.data_root else ""
    resumed = f", resumed after epoch {start_epoch}" if start_epoch else ""
    processes = f" × {info.world_size} processes" if info.enabled else ""
    precision = "float32" if amp_dtype is None else f"{str(amp_dtype).removeprefix('torch.')} autocast"
    lines = [
        f"run summary ({cfg.output}{resumed})",
        f"  data      {cfg.dataset}{where}: {len(train_set)} train / {len(val_set)} val ({val_from}) / "
        f"{len(test_set)} test ({cfg.test_split!r}) images, {len(classes)} labels",
        f"  model     {cfg.model} at {cfg.img_size} px, {_weights_text(cfg)}",
        f"            {describe_cost(costs['student'])}",
    ]
    if teacher is not None and teacher_facts:
        lines += teacher_lines(teacher_facts, teacher_size, cfg.cache_teacher)
        lines.append(f"            {describe_cost(costs['teacher'])}")
    elif teacher is not None:
        name = getattr(teacher, "model_args", {}).get("name", "?")
        lines += [f"  teacher   {cfg.teacher}: {name} at {teacher_size} px, frozen"
                  + (", outputs cached" if cfg.cache_teacher else ""),
                  f"            {describe_cost(costs['teacher'])}"]
    lines += [
        f"  method    {method_text(step_module.distiller, cfg.method)}",
        f"  device    {device}{processes}, {threads.threads} CPU thread(s) ({threads.reason}), {precision}",
        f"  schedule  {cfg.epochs} epochs of {steps_per_epoch} steps, batch {cfg.batch_size}, Adam lr {cfg.lr:g} "
        f"(OneCycle over {cfg.schedule_epochs or cfg.epochs} epochs, {cfg.warmup:.0%} warm-up), weight decay "
        f"{cfg.weight_decay:g}, augmentation {'on' if cfg.augment else 'off'}, seed {cfg.seed}",
    ]
    if cfg.read_size and cfg.read_size != cfg.img_size:
        lines.append(f"  images    training images read and augmented at {cfg.read_size} px; the student sees them "
                     f"resized to {cfg.img_size} px (validation and test images are read at {cfg.img_size} px)")
    read = cfg.read_size or cfg.img_size
    if teacher_size and teacher_size > read and cfg.method != "vanilla":
        lines.append(f"  images    the teacher sees the training images resized up from {read} to {teacher_size} px"
                     + ("" if cfg.read_size else ": they are no larger (reading them larger would only upsample)"))
    epochs_left = cfg.epochs - start_epoch
    if estimate is not None:
        per_epoch = duration(estimate.first_epoch)
        if abs(estimate.first_epoch - estimate.later_epoch) > 0.05 * estimate.first_epoch:
            per_epoch += f" for the first epoch, {duration(estimate.later_epoch)} for the others"
        else:
            per_epoch += " per epoch"
        lines.append(f"  estimate  ≈ {per_epoch}; ≈ {duration(estimate.total)} for {epochs_left} epoch(s) and the "
                     "test (from a timed step; each epoch's line shows the real speed)")
    elif epochs_left > 0:
        lines.append("  estimate  each epoch's line shows the speed (no timing under torchrun)")
    return lines
