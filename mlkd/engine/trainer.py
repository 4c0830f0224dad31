"""The training loop behind `mlkd train` and `mlkd distill`.

One function, `fit`, runs a whole job from a `RunConfig`. After the pre-flight checks (which build the
data sets) and taking the output folder, a run has three steps: `_set_up` (models, distiller, teacher and
its cache, loaders, optimiser and schedule, or the state of a resumed run), `_train_epochs` (each epoch
trained, validated and committed to ``last.pt``) and `_finish` (the best checkpoint on the test split,
metrics.json, the plot).
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from mlkd.config import RunConfig, default_lr_and_reason, load_yaml, resume_comparable
from mlkd.data import Splits, build_loader
from mlkd.data.folds import FoldBatchSampler
from mlkd.data.views import AugmentedViews
from mlkd.engine import distributed as ddp
from mlkd.engine.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from mlkd.engine.crossfit import FoldTeachers, fold_record
from mlkd.engine.fit import training_fit
from mlkd.engine.evaluate import ModelInput, compute_metrics, eval_loader, predict, save_scores
from mlkd.engine.preflight import preflight, resolve_val_split
from mlkd.engine.logging import RunLogger, plot_learning_curves, progress
from mlkd.engine.run_folder import RunFolder, foreign_entries
from mlkd.engine.schedule import build_schedule
from mlkd.engine.summary import method_text, summarize_run
from mlkd.engine.teacher import TeacherSetup, is_external, prepare_teacher, run_teacher, \
    teacher_identity
from mlkd.engine.teacher_cache import DEFAULT_VIEWS, TeacherCache, fill_view, shared_cache
from mlkd.engine.threads import set_threads
from mlkd.files import atomic_write_text
from mlkd.losses import create_distiller
from mlkd.losses._checks import check_targets
from mlkd.losses.logits import bce_sum_loss
from mlkd.models import create_model
from mlkd.outputs import LossOutput, ModelOutput

log = logging.getLogger("mlkd")

# Settings that do not change what a resumed run computes.
RESUME_MAY_CHANGE = {"resume", "output", "quiet", "workers", "device", "tensorboard", "data_root", "cache_limit_gib",
                     "threads", "teacher_head_cache"}


@dataclass
class RunResult:
    """What `fit` returns: the output folder, the final test metrics, the per-epoch history and the
    configuration the run used (the default lr resolved)."""

    output: Path
    metrics: dict[str, Any]
    best_epoch: int
    history: list[dict[str, Any]] = field(default_factory=list)
    config: RunConfig | None = None


class TrainStep(nn.Module):
    """Student plus distiller as one module, so that DDP synchronises the gradients of both.

    Under ``world_size`` processes DDP averages gradients, but the objective mixes terms summed over
    the batch (BCE, CD, ID, ...) with batch-averaged ones (MLD, KD, ...). Scaling each summed term
    by ``world_size`` before the backward pass makes the averaged gradient equal the gradient of the
    objective on the global batch; the logged terms stay unscaled.

    Args:
        student, distiller: the run's.
        world_size: processes under torchrun.
        label_columns: the data-set columns the teacher's outputs stand for, when it lacks some of the
            data set's labels (``teacher_missing_labels="exclude"``); the distiller then sees only those
            columns of the student and the targets (`distill_taught_labels`). None: all labels.
    """

    def __init__(self, student: nn.Module, distiller: nn.Module, world_size: int = 1,
                 label_columns: list[int] | None = None):
        super().__init__()
        self.student = student
        self.distiller = distiller
        self.world_size = world_size
        self.label_columns = None if label_columns is None else [int(c) for c in label_columns]
        if self.label_columns is not None:
            # Buffers, so that the indices follow the module to its device (not saved: the run rebuilds them).
            self.register_buffer("taught", torch.tensor(self.label_columns, dtype=torch.long), persistent=False)

    def forward(self, images: Tensor, teacher_out: ModelOutput | None, targets: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        student_out = self.student(images)
        if self.label_columns is None:
            out: LossOutput = self.distiller(student_out, teacher_out, targets)
        else:
            out = distill_taught_labels(self.distiller, student_out, teacher_out, targets, self.taught)
        if self.world_size == 1:
            return out.total, out.terms
        mean_terms = self.distiller.batch_mean_terms
        total = sum(t if name in mean_terms else t * self.world_size for name, t in out.terms.items())
        return total, out.terms


def distill_taught_labels(distiller: nn.Module, student: ModelOutput, teacher: ModelOutput | None, targets: Tensor,
                          taught: Tensor) -> LossOutput:
    """The objective when the teacher knows only some of the data set's labels.

    The distiller sees the student's logits and label-wise embeddings, and the targets, of the taught
    labels only (columns ``taught``, in the order of the teacher's outputs); the student's feature maps
    whole. The labels the teacher lacks still train the student through BCE: since the summed BCE adds
    up over labels, their part is added to the ``bce`` term (weighted by the distiller's ``bce_weight``),
    so ``bce`` is the BCE over all labels and the distillation terms are over the taught ones.

    Args:
        distiller: the run's distiller.
        student: the student's outputs over all ``q`` labels (``logits [N, q]``, ``label_embeddings
            [N, q, d]`` or None, ``features``).
        teacher: the teacher's outputs over the taught labels (``logits [N, q']``, ...).
        targets: ``[N, q]`` labels in {0, 1}.
        taught: ``[q']`` the data-set column of each teacher output, on the targets' device.

    Returns:
        The distiller's `LossOutput`, its ``bce`` term and total including the BCE of the other labels.
    """
    q = student.logits.shape[1]
    untaught = torch.ones(q, dtype=torch.bool, device=taught.device)
    untaught[taught] = False
    rest = untaught.nonzero().flatten()
    embeddings = student.label_embeddings
    seen = ModelOutput(student.logits.index_select(1, taught),
                       None if embeddings is None else embeddings.index_select(1, taught), student.features)
    out: LossOutput = distiller(seen, teacher, targets.index_select(1, taught))
    if rest.numel() == 0:
        return out
    validate = bool(getattr(distiller, "validate", True))
    other = targets.index_select(1, rest)
    check_targets(other, other.shape[0], other.shape[1], "student.logits", validate)
    bce_rest = distiller.bce_weight * bce_sum_loss(student.logits.index_select(1, rest), other, validate=validate)
    terms = dict(out.terms)
    terms["bce"] = terms["bce"] + bce_rest
    return LossOutput(total=out.total + bce_rest, terms=terms)


def fit(cfg: RunConfig, teacher_module: nn.Module | None = None) -> RunResult:
    """Run one training (``cfg.method == "vanilla"`` without a teacher) or distillation job.

    Writes into ``cfg.output``: ``config.yaml``, ``last.pt`` (each epoch), ``best.pt`` (best
    validation mAP), ``log.csv``/``log.jsonl`` (and TensorBoard events), ``learning_curve.png`` and
    ``metrics.json`` with the test metrics of ``best.pt``.

    Args:
        cfg: the run's configuration.
        teacher_module: the teacher when it is a module given to `mlkd.distill` (``cfg.teacher_module``
            records its class; config.yaml cannot hold the module, so a resumed run needs it again).
    """
    # A caller that runs several jobs in one torchrun launch (mlkd bench) keeps its process group
    # for all of them: a process group cannot be created again once destroyed under torchrun.
    owns_group = not ddp.current_info().enabled
    info, device = ddp.init_distributed(cfg.device)
    try:
        return _fit(cfg, info, device, teacher_module)
    finally:
        if owns_group:
            ddp.shutdown_distributed()


def _fit(cfg: RunConfig, info: ddp.DistInfo, device: torch.device, teacher_module: nn.Module | None = None) -> RunResult:
    """Pre-flight, the output folder, then the run's three steps: `_set_up`, `_train_epochs`, `_finish`."""
    cfg = resolve_val_split(cfg)  # csv: val.csv when the root has one; recorded in config.yaml
    # Options, data and a teacher trained elsewhere, before anything is written (engine/preflight.py); the
    # run trains on the sets and with the teacher it checked.
    checked = preflight(cfg, info.world_size, teacher_module=teacher_module)
    # The teacher's resolution and normalisation (given, or timm's) and the side the training images are
    # read at, as the sets were built: recorded in config.yaml.
    cfg = checked.config
    if checked.teacher is not None:
        size_from = cfg.teacher_input_source.get("img_size", "")
        if size_from.startswith("timm") and cfg.teacher_img_size != cfg.img_size:
            log.warning("the teacher sees %d px images, the resolution of %s (timm's weights, not necessarily the "
                        "one your teacher was trained at); pass --teacher-img-size PX if it was trained at another",
                        cfg.teacher_img_size, size_from.removeprefix("timm's pretrained_cfg of "))
    if cfg.lr is None:
        # The default rate depends on the schedule's length, known only once the data set is read.
        lr, reason = default_lr_and_reason(cfg, checked.steps)
        cfg = dataclasses.replace(cfg, lr=lr)
        if info.is_main:  # every process computes the same rate; one line says it
            log.info("lr not given: %g, %s", lr, reason)
    out_dir = Path(cfg.output)
    folder, resume_state = _prepare_output(cfg, out_dir, info)
    try:
        if resume_state is None and info.is_main:
            # Written right after the lock, before the models are built (seconds with timm models or
            # --compile-teacher): a run killed during its set-up leaves the settings that
            # `--output DIR --resume` continues, never a folder that would resume some other run.
            atomic_write_text(out_dir / "config.yaml", yaml.safe_dump(_saved_config(cfg).to_dict(), sort_keys=False))
        run = _set_up(cfg, info, device, out_dir, checked.sets, resume_state, checked.teacher, teacher_module)
        _train_epochs(run)
        return _finish(run)
    except (Exception, KeyboardInterrupt):
        # A run that fails, or is stopped with Ctrl-C, before its first epoch committed leaves no folder
        # behind that it created, its config.yaml included (a kill -9 runs no code: see above).
        if folder is not None:
            folder.discard_if_unused()
        raise
    finally:
        if folder is not None:
            folder.release()


@dataclass
class _Models:
    """A run's models on its device, as `_build_models` makes them."""

    student: nn.Module
    student_input: ModelInput
    distiller: nn.Module
    teacher: nn.Module | None
    teacher_input: ModelInput
    teacher_sample: ModelOutput | None  # the teacher's outputs of the sample batch: the cache's shapes
    label_columns: list[int] | None = None  # data-set columns the teacher teaches, when not all (TrainStep)
    teacher_facts: dict[str, Any] | None = None  # TeacherSetup.facts: the summary's and metrics.json's
    teacher_module: nn.Module | None = None  # a module given to mlkd.distill (the cache key reads its state)


@dataclass
class _Run:
    """A run's parts and its state: made by `_set_up`, advanced by `_train_epochs`, reported by `_finish`."""

    cfg: RunConfig
    info: ddp.DistInfo
    device: torch.device
    out_dir: Path
    sets: Splits
    classes: list[str]
    amp_dtype: torch.dtype | None
    models: _Models
    train_views: AugmentedViews
    train_loader: DataLoader
    val_loader: DataLoader
    train_step: nn.Module  # `inner`, wrapped in DistributedDataParallel under torchrun
    inner: TrainStep
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    cache: TeacherCache | None
    start_epoch: int = 0
    best_map: float = -math.inf
    best_epoch: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    logger: RunLogger | None = None  # rank 0 only
    facts: dict[str, Any] = field(default_factory=dict)  # `summarize_run`'s, for metrics.json
    common: dict[str, Any] = field(default_factory=dict)  # what every checkpoint records besides the weights


def _set_up(cfg: RunConfig, info: ddp.DistInfo, device: torch.device, out_dir: Path, sets: Splits,
            resume_state: dict[str, Any] | None, prebuilt_teacher: nn.Module | None = None,
            teacher_module: nn.Module | None = None) -> _Run:
    """Step 1: seeds, models, loaders, optimiser and schedule, the teacher cache, the resumed state, the logs.

    Every random draw happens in a fixed order (seeds, the teacher, the student's initialisation, the
    sample batch, the loaders): reruns and resumes depend on it.
    """
    _seed_everything(cfg.seed)
    amp_dtype = _amp_dtype(cfg, device)
    threads = set_threads(cfg.threads)
    models = _build_models(cfg, info, device, sets.train, prebuilt_teacher, teacher_module)
    run = _build_training(cfg, info, device, out_dir, sets, models, amp_dtype)
    if resume_state is not None:
        _restore(run, resume_state)
    # The logs are rebuilt from the committed history: after a crash they hold exactly its epochs.
    run.logger = RunLogger(out_dir, tensorboard=cfg.tensorboard, history=run.history) if info.is_main else None
    steps_per_epoch = len(run.train_loader)
    # Fold teachers share an architecture and input: the summary's costs and timings are one teacher's.
    teacher = models.teacher.representative if isinstance(models.teacher, FoldTeachers) else models.teacher
    run.facts = summarize_run(cfg, info, device, threads, sets, run.inner, teacher, models.teacher_input,
                              models.student_input, amp_dtype, steps_per_epoch, run.start_epoch,
                              teacher_facts=models.teacher_facts)
    run.common = {"model_args": models.student.model_args, "classes": run.classes,
                  "config": _saved_config(cfg).to_dict(), "input_norm": models.student_input.stats,
                  # the objective as resolved, defaults included: a default that changes between versions
                  # leaves config.yaml equal, and a resume must not mix two objectives in one run
                  "objective": method_text(run.inner.distiller, cfg.method)}
    if cfg.hold_out_fold is not None:  # a cross-fitted teacher: the fold it held out, of which training set
        run.common["folds"] = fold_record(sets.train, cfg.hold_out_fold)
    return run


def _create_distiller(cfg: RunConfig, info: ddp.DistInfo) -> nn.Module:
    """The run's distiller with its weights and options (its size-dependent parts not built yet)."""
    distiller = create_distiller(cfg.method, **{f"lambda_{k}": v for k, v in cfg.lambdas.items()}, **cfg.method_options)
    if cfg.gather_embeddings:
        if not distiller.uses_embeddings:
            raise ValueError(f"--gather-embeddings applies to the label-wise embedding losses (l2d, led, cd, id), "
                             f"not to {cfg.method!r}; drop the flag")
        if info.enabled:
            distiller.embedding_gather = ddp.gather_structure_inputs
        else:
            log.info("--gather-embeddings has no effect in a single process")
    return distiller


def _build_models(cfg: RunConfig, info: ddp.DistInfo, device: torch.device, train_set: Dataset,
                  prebuilt_teacher: nn.Module | None = None, teacher_module: nn.Module | None = None) -> _Models:
    """The distiller, the teacher (when the method has one) and the student, on ``device``.

    The student's initialisation depends on the seed alone; the distiller's size-dependent parts
    (projections, fusion) are built from both models' outputs on the first two training images (the
    student's on the labels the teacher teaches).
    """
    classes = list(train_set.classes)
    distiller = _create_distiller(cfg, info)
    teacher, teacher_input, setup = None, ModelInput(), None
    if distiller.requires_teacher:
        setup: TeacherSetup = prepare_teacher(cfg, classes, device, distiller, train_set, module=teacher_module,
                                              prebuilt=prebuilt_teacher)
        teacher, teacher_input = setup.module, setup.input
        if setup.data_columns is not None:
            excluded = setup.facts.get("classes", {}).get("excluded", [])
            log.info("the teacher has no output for %d of the %d labels (%s): they are left out of the distillation "
                     "terms and train on BCE only", len(excluded), len(classes), ", ".join(excluded))
    elif cfg.teacher or cfg.fold_teachers or is_external(cfg):
        given = cfg.teacher or cfg.fold_teachers or cfg.teacher_model or cfg.teacher_module
        log.warning("method %r uses no teacher; ignoring the teacher %s", cfg.method, given)
    torch.manual_seed(cfg.seed)  # the student's initialisation depends on the seed alone
    student = create_model(cfg.model, len(classes), img_size=cfg.img_size, weights=cfg.weights,
                           pretrained=cfg.pretrained, **cfg.model_options)
    student_input = _student_input(cfg, student)
    student.to(device)
    if cfg.sync_bn and info.enabled:
        student = nn.SyncBatchNorm.convert_sync_batchnorm(student)

    # The distiller's size-dependent parts (projections, fusion) come from one sample batch.
    sample = torch.stack([train_set[i][0] for i in range(min(2, len(train_set)))]).to(device)
    with torch.no_grad():
        student.eval()
        s_sample = student(student_input.to(device)(sample))
        t_sample = (run_teacher(teacher, teacher_input(sample), torch.arange(sample.shape[0]))
                    if teacher is not None else None)
        student.train()
    if distiller.uses_features:
        _check_feature_maps(cfg, distiller, s_sample, t_sample)
    columns = setup.data_columns if setup is not None else None
    if columns is not None:  # the distiller sees the taught labels only (`distill_taught_labels`)
        index = torch.tensor(columns, dtype=torch.long, device=device)
        embeddings = s_sample.label_embeddings
        s_sample = ModelOutput(s_sample.logits.index_select(1, index),
                               None if embeddings is None else embeddings.index_select(1, index), s_sample.features)
    distiller.build(s_sample, t_sample)
    distiller.to(device)
    return _Models(student, student_input, distiller, teacher, teacher_input, t_sample, columns,
                   setup.facts if setup is not None else None, teacher_module)


def _check_feature_maps(cfg: RunConfig, distiller: nn.Module, student: ModelOutput, teacher: ModelOutput | None) -> None:
    """Refuse, before training, a method that reads feature maps from a model that returns none."""
    terms = [t for t, part in getattr(distiller, "teacher_terms", {}).items() if part == "features"]
    for who, out in (("student", student), ("teacher", teacher)):
        if out is not None and not out.features:
            fix = ("pass --lambda pkt=0 (lambdas={'pkt': 0}): L2D without its relation term, which is the only "
                   "part that reads them" if getattr(distiller, "lambda_pkt", 0) else
                   "use a model that returns its stage feature maps (a timm model, or a module returning a dict "
                   "with 'features'), or a method that reads logits only (kd, mld)")
            raise ValueError(f"method {cfg.method!r} reads the models' feature maps ({', '.join(terms)}), but the "
                             f"{who} returns none; {fix}")


def _build_training(cfg: RunConfig, info: ddp.DistInfo, device: torch.device, out_dir: Path, sets: Splits,
                    models: _Models, amp_dtype: torch.dtype | None) -> _Run:
    """The loaders, the train step (DDP under torchrun), optimiser, schedule and scaler, and the teacher
    cache; returned as a `_Run` at its start (no epoch done)."""
    train_set, val_set, _ = sets
    student, distiller, teacher = models.student, models.distiller, models.teacher
    # Each item is a reproducible augmented view (image, target, index, view id): see mlkd.data.views.
    train_views = AugmentedViews(train_set, train_view_count(cfg), cfg.seed)
    # Cross-fitted teachers: every batch from one fold, taught by the teacher that never saw it (mlkd.data.folds).
    folds = teacher.fold.cpu() if isinstance(teacher, FoldTeachers) else None
    train_loader = build_loader(train_views, cfg.batch_size, train=True, workers=cfg.workers, seed=cfg.seed,
                                folds=folds)
    if len(train_loader) == 0:
        raise ValueError(f"the training set has {len(train_set)} images, fewer than one batch of {cfg.batch_size} "
                         "(training drops incomplete batches); lower --batch-size")
    val_loader = eval_loader(val_set, cfg.batch_size, cfg.workers, device)
    step_module = TrainStep(student, distiller, info.world_size, models.label_columns).to(device)
    optimizer = build_optimizer(step_module, cfg.lr, cfg.weight_decay)
    steps_per_epoch = len(train_loader)
    scheduler = build_schedule(optimizer, cfg.lr, (cfg.schedule_epochs or cfg.epochs) * steps_per_epoch, cfg.warmup)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    if info.enabled:
        ids = [device.index] if device.type == "cuda" else None
        step_module = nn.parallel.DistributedDataParallel(step_module, device_ids=ids)
    train_step = step_module
    inner = step_module.module if info.enabled else step_module

    cache = None
    if cfg.cache_teacher and teacher is not None:
        cache = shared_cache(_cache_key(cfg, train_views.views, models.teacher_module), len(train_set), train_views.views,
                             keep_embeddings=distiller.uses_embeddings,
                             feature_levels=distiller.teacher_feature_levels if distiller.uses_features else 0,
                             sample=models.teacher_sample, limit_gib=cfg.cache_limit_gib)
    return _Run(cfg, info, device, out_dir, sets, list(train_set.classes), amp_dtype, models, train_views,
                 train_loader, val_loader, train_step, inner, optimizer, scheduler, scaler, cache)


def _restore(run: _Run, resume_state: dict[str, Any]) -> None:
    """Continue from a committed epoch: the weights, optimiser, schedule, scaler, every generator, the history."""
    _check_resumed_classes(resume_state, run.classes, run.out_dir)
    _check_resumed_objective(_recorded_objective(resume_state, run.cfg),
                             method_text(run.inner.distiller, run.cfg.method), run.out_dir)
    run.inner.student.load_state_dict(resume_state["model"])
    run.inner.distiller.load_state_dict(resume_state["distiller"])
    run.optimizer.load_state_dict(resume_state["optimizer"])
    run.scheduler.load_state_dict(resume_state["scheduler"])
    run.scaler.load_state_dict(resume_state["scaler"])
    set_rng_state(resume_state["rng"])
    run.start_epoch, run.best_map, run.best_epoch = (resume_state["epoch"], resume_state["best_map"],
                                                     resume_state["best_epoch"])
    run.history = [dict(r) for r in resume_state.get("history", [])]
    log.info("resumed %s after epoch %d", run.out_dir, run.start_epoch)


# Defaults that changed before checkpoints recorded the objective (issue 19's search of the baselines' weights): a
# checkpoint without the record was made with these, except where its run set them explicitly.
_UNRECORDED_DEFAULTS = {"kd": {"lambda_kd": 10.0, "temperature": 4.0}, "pkt": {"lambda_pkt": 30000.0}}


def _recorded_objective(resume_state: dict[str, Any], cfg: RunConfig) -> str | None:
    """The objective a checkpoint was trained with: its record, else what the defaults of its time give."""
    saved = resume_state.get("objective")
    if saved is not None or cfg.method not in _UNRECORDED_DEFAULTS:
        return saved
    given = {**{f"lambda_{k}": v for k, v in cfg.lambdas.items()}, **cfg.method_options}
    return method_text(create_distiller(cfg.method, **{**_UNRECORDED_DEFAULTS[cfg.method], **given}), cfg.method)


def _check_resumed_objective(saved: str | None, now: str, out_dir: Path) -> None:
    """Refuse to continue (or to report as finished) a run whose objective differs from what the same settings
    give today: only a method's defaults can make them differ, e.g. after an mlkd update."""
    if saved is None or saved == now:
        return
    raise ValueError(f"--resume: the run in {out_dir} was trained with the objective\n  {saved}\nbut the same "
                     f"settings now give\n  {now}\n(a default of the method changed since: this run was made by "
                     "another mlkd version). Finish it with that version, or start a new run in another --output "
                     f"(--weights {out_dir / 'last.pt'} starts from its weights)")


def _train_epochs(run: _Run) -> None:
    """Step 2: the epochs from where the run stands, each trained, validated and committed."""
    for epoch in range(run.start_epoch, run.cfg.epochs):
        record = _train_epoch(run, epoch)
        improved = record["val_mAP"] > run.best_map
        if improved:
            run.best_map, run.best_epoch = record["val_mAP"], epoch + 1
        run.history.append(record)
        if run.info.is_main:
            _commit_epoch(run, epoch, improved)
        ddp.barrier()


def _train_epoch(run: _Run, epoch: int) -> dict[str, Any]:
    """Train epoch ``epoch`` (0-based; the teacher cache filled first where it misses the epoch's view) and
    validate; returns the epoch's record for the history."""
    cfg, info, device, amp_dtype = run.cfg, run.info, run.device, run.amp_dtype
    train_loader, train_views, cache = run.train_loader, run.train_views, run.cache
    teacher, teacher_input, student_input = run.models.teacher, run.models.teacher_input, run.models.student_input
    show = info.is_main and not cfg.quiet
    for sampler in (train_loader.sampler, train_loader.batch_sampler):
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)
    if train_loader.generator is not None:
        # Shuffling and worker seeds depend on (seed, epoch, rank) only, so a resumed run sees
        # the same batches and augmentations as an uninterrupted one.
        train_loader.generator.manual_seed((cfg.seed * 100_003 + epoch) * 1_009 + info.rank)
    train_views.set_epoch(epoch)
    t0 = time.perf_counter()
    if cache is not None:  # the teacher runs on the epoch's view of the images not cached yet
        shard = list(train_loader.sampler) if isinstance(train_loader.sampler, DistributedSampler) else None
        if isinstance(train_loader.batch_sampler, FoldBatchSampler) and info.enabled:
            shard = train_loader.batch_sampler.indices()
        fill_view(cache, teacher, teacher_input, train_views, train_views.current_view, device, amp_dtype,
                  cfg.workers, indices=shard, show=show)
    sums = run_epoch(run.train_step, train_loader, run.optimizer, run.scheduler, run.scaler, teacher, teacher_input,
                     student_input, cache, device, amp_dtype, cfg.grad_clip, f"epoch {epoch + 1}/{cfg.epochs}", show)
    seconds = time.perf_counter() - t0
    images_seen = sums.pop("_images")
    scores, targets = predict(run.inner.student, run.val_loader, device, student_input, amp_dtype)
    val_map = compute_metrics(scores, targets, cfg.threshold, run.classes)["mAP"]
    return {"epoch": epoch + 1, **{f"train_{k}": v for k, v in sums.items()}, "val_mAP": val_map,
            "lr": run.scheduler.get_last_lr()[0], "epoch_seconds": seconds,
            "images_per_second": images_seen / seconds}


def _commit_epoch(run: _Run, epoch: int, improved: bool) -> None:
    """Rank 0, after epoch ``epoch`` (0-based): the epoch's commit, then the files derived from it."""
    cfg, out_dir, inner = run.cfg, run.out_dir, run.inner
    # The epoch's commit: last.pt holds everything else is derived from (best.pt when this epoch
    # is the best, the logs from its history), so a crash at any instant and --resume end as
    # the uninterrupted run (see `_recover_derived`).
    state = {**run.common, "model": inner.student.state_dict(), "distiller": inner.distiller.state_dict(),
             "optimizer": run.optimizer.state_dict(), "scheduler": run.scheduler.state_dict(),
             "scaler": run.scaler.state_dict(), "rng": rng_state(), "epoch": epoch + 1,
             "best_map": run.best_map, "best_epoch": run.best_epoch, "history": run.history}
    save_checkpoint(state, out_dir / "last.pt")
    if improved:
        save_checkpoint(_best_state(state), out_dir / "best.pt")
    run.logger.write(run.history)
    if not cfg.quiet:
        record = run.history[-1]
        terms = " ".join(f"{k[len('train_'):]}={v:.4g}" for k, v in record.items() if k.startswith("train_"))
        log.info("epoch %d/%d  %s  val mAP %.2f%%  %.0f img/s", epoch + 1, cfg.epochs, terms,
                 100 * record["val_mAP"], record["images_per_second"])


def _finish(run: _Run) -> RunResult:
    """Step 3: the best validation checkpoint on the test split; metrics.json, test scores, the plot."""
    cfg, info, device, out_dir = run.cfg, run.info, run.device, run.out_dir
    student_input, amp_dtype = run.models.student_input, run.amp_dtype
    best = load_checkpoint(out_dir / "best.pt", map_location="cpu") if info.is_main else None
    best_state = ddp.broadcast_object(best["model"] if best else None)
    run.inner.student.load_state_dict(best_state)
    test_loader = eval_loader(run.sets.test, cfg.batch_size, cfg.workers, device)
    test_scores, test_targets = predict(run.inner.student, test_loader, device, student_input, amp_dtype)
    metrics = compute_metrics(test_scores, test_targets, cfg.threshold, run.classes)
    metrics.update({"split": cfg.test_split, "best_epoch": run.best_epoch, "best_val_mAP": run.best_map,
                    "method": cfg.method, "model": cfg.model, "seed": cfg.seed, **run.facts})
    if run.models.teacher is None:
        # A model trained without a teacher is how teachers are made: record how closely it fits its training
        # images, which a student's run reports next to its validation mAP (mlkd/engine/fit.py).
        metrics["fit"] = training_fit(run.inner.student, run.sets.train, cfg, device, student_input, amp_dtype)
        if info.is_main:
            save_checkpoint({**best, "fit": metrics["fit"]}, out_dir / "best.pt")
    if info.is_main:
        _write_json(metrics, out_dir / "metrics.json")
        # Per-image scores let `mlkd bench` bootstrap over test images (paired with another run's).
        save_scores(out_dir / "test_scores.npz", test_scores, test_targets)
        plot_learning_curves(run.history, out_dir / "learning_curve.png", f"{cfg.model} on {cfg.dataset}", cfg.method)
        run.logger.close()
    return RunResult(out_dir, metrics, run.best_epoch, run.history, cfg)


def run_epoch(train_step: nn.Module, loader: DataLoader, optimizer, scheduler, scaler, teacher, teacher_input,
              student_input, cache: TeacherCache | None, device: torch.device, amp_dtype, grad_clip,
              desc: str, show: bool) -> dict[str, float]:
    """One pass over ``loader``; returns each loss term averaged per image, and the image count."""
    train_step.train()
    student_input = student_input.to(device)
    sums: dict[str, Tensor] = {}
    seen = 0
    bar = progress(loader, len(loader), desc, show)
    t0 = time.perf_counter()
    for step, (images, targets, index, view) in enumerate(bar):
        images = images.to(device, non_blocking=True)
        targets = targets.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            teacher_out = teacher_outputs(teacher, teacher_input, images, index, view, cache, device)
            total, terms = train_step(student_input(images), teacher_out, targets)
        if not torch.isfinite(total):
            parts = ", ".join(f"{k}={v.item():.4g}" for k, v in terms.items())
            raise FloatingPointError(f"the loss became {total.item()} at {desc}, step {step + 1} ({parts}); "
                                     "lower --lr, set grad_clip, or check the input data")
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(total).backward()
        if grad_clip:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(train_step.parameters(), grad_clip)
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        seen += images.shape[0]
        for k, v in terms.items():
            sums[k] = sums.get(k, 0.0) + v.detach().float()
        if show and (step % 10 == 0 or step == len(loader) - 1):
            rate = seen / (time.perf_counter() - t0)
            bar.set_postfix({k: f"{float(v) / seen:.3g}" for k, v in sums.items()} | {"img/s": f"{rate:.0f}"})
    result = {k: float(v) / seen for k, v in sums.items()}
    result["_images"] = seen
    return result


@torch.no_grad()
def teacher_outputs(teacher: nn.Module | None, norm: ModelInput, images: Tensor, index: Tensor, view: Tensor,
                    cache: TeacherCache | None, device: torch.device) -> ModelOutput | None:
    """The frozen teacher's outputs for the student's batch ``images [B, 3, H, W]``.

    Consistent teaching: without a cache the teacher sees exactly the student's augmented images,
    resized and normalised its own way by ``norm``. With a cache the outputs of the same views
    (``index [B]``, ``view [B]``) are read back; `fill_view` computed them on identical images.
    """
    if teacher is None:
        return None
    if cache is None:
        out = run_teacher(teacher, norm(images), index)
        # The cache hands back contiguous copies, and a loss's rounding can depend on the memory layout
        # of its inputs (a model's logits are often a transposed view): the same layout both ways keeps
        # a cached run bit-identical to an uncached one.
        return ModelOutput(out.logits.contiguous(),
                           None if out.label_embeddings is None else out.label_embeddings.contiguous(),
                           [f.contiguous() for f in out.features])
    return cache.get(index, view, device)


def train_view_count(cfg: RunConfig) -> int | None:
    """Fixed augmented views per training image (see mlkd.data.views), or None for a fresh view per epoch.

    Without augmentation an image has one view. With it, ``teacher_views`` when given; otherwise
    `DEFAULT_VIEWS` when the teacher's outputs are cached, and fresh views (the paper's) when not.
    """
    if not cfg.augment:
        if cfg.teacher_views not in (None, 1):
            log.info("teacher_views=%d has no effect without augmentation (each image has one view)", cfg.teacher_views)
        return 1
    if cfg.teacher_views is not None:
        return cfg.teacher_views
    return DEFAULT_VIEWS if cfg.cache_teacher else None


def _cache_key(cfg: RunConfig, views: int, teacher_module: nn.Module | None = None) -> tuple:
    """Everything that determines the teacher's output for a training-set (index, view): the teacher (its
    file and modification time, or a module's state digest; its classes, their mapping and its input), the
    images and views, and the inference settings."""
    teacher = teacher_identity(cfg, teacher_module)
    return (repr(sorted(teacher.items())), repr(cfg.teacher_classes), cfg.teacher_missing_labels, cfg.teacher_img_size,
            repr(cfg.teacher_mean), repr(cfg.teacher_std), cfg.dataset, cfg.data_root,
            repr(sorted(cfg.dataset_options.items())), cfg.train_split, cfg.val_split, cfg.val_fraction, cfg.img_size,
            cfg.read_size, cfg.augment, views, cfg.amp and cfg.amp_dtype, cfg.teacher_precision, cfg.compile_teacher)


def build_optimizer(module: nn.Module, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """Adam with weight decay on weight matrices and kernels only, not on biases or norm parameters."""
    decay, no_decay = [], []
    for p in module.parameters():
        if p.requires_grad:
            (decay if p.ndim > 1 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.Adam([g for g in groups if g["params"]], lr=lr)


def _student_input(cfg: RunConfig, student: nn.Module) -> ModelInput:
    """The student's input: ``img_size`` (training images read at a larger ``read_size`` are resized to it),
    with ImageNet-style statistics for pretrained backbones, none for models trained from scratch."""
    stats = getattr(student, "data_config", None)
    use = cfg.normalize if cfg.normalize is not None else bool(stats) and bool(cfg.weights or cfg.pretrained)
    if not use:
        return ModelInput(size=cfg.img_size)
    if not stats:
        stats = {"mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)}
    return ModelInput(stats["mean"], stats["std"], cfg.img_size)


def _amp_dtype(cfg: RunConfig, device: torch.device) -> torch.dtype | None:
    if not cfg.amp:
        return None
    if device.type != "cuda":
        log.warning("--amp applies to CUDA only; this run on %s stays in float32", device)
        return None
    return torch.bfloat16 if cfg.amp_dtype == "bfloat16" else torch.float16


def _prepare_output(cfg: RunConfig, out_dir: Path,
                    info: ddp.DistInfo) -> tuple[RunFolder | None, dict[str, Any] | None]:
    """Take the output folder (created, locked) and check it; return it (rank 0) and the resume state.

    Rank 0 decides and reads the files; other ranks receive its answer, so a multi-node run needs the
    output folder on rank 0's machine only.
    """
    answer: tuple[Exception | None, dict[str, Any] | None] = (None, None)
    folder = None
    if info.is_main:
        try:
            folder = RunFolder(out_dir).open()
            answer = _check_output(cfg, folder)
        except (OSError, ValueError) as err:
            answer = (err, None)
        if answer[0] is not None and folder is not None:
            folder.discard_if_unused()
            folder.release()
    error, state = ddp.broadcast_object(answer)
    if error is not None:
        raise error
    return folder, state


def _check_output(cfg: RunConfig, folder: RunFolder) -> tuple[Exception | None, dict[str, Any] | None]:
    """With the folder locked: refuse to overwrite a run unless resuming; return the resume state."""
    out_dir = folder.path
    last = out_dir / "last.pt"
    if cfg.resume:
        if not last.exists():
            saved = out_dir / "config.yaml"
            if folder.used_before and not foreign_entries(out_dir):
                # Stopped before its first epoch was committed: nothing to continue but the settings.
                error = _changed_settings(load_yaml(saved), cfg, out_dir) if saved.is_file() else None
                if error is None:
                    log.info("%s stopped before its first epoch finished; starting it from the beginning", out_dir)
                return error, None
            return FileNotFoundError(f"--resume: nothing to resume in {out_dir} (no last.pt); start the run "
                                     "without --resume"), None
        state = load_checkpoint(last)
        error = _changed_settings(state.get("config") or {}, cfg, out_dir)
        if error is not None:
            return error, None
        _recover_derived(state, out_dir)
        if state["epoch"] >= cfg.epochs:
            log.info("%s already finished %d epochs; writing the final report only", out_dir, state["epoch"])
        return None, state
    if last.exists():
        return FileExistsError(f"{out_dir} already holds a run (last.pt); continue it with --resume "
                               f"(`--output {out_dir} --resume` reads its config.yaml) or choose another --output"), None
    # Only a folder that an mlkd run opened before may hold files already (mlkd's own, of a run that
    # stopped before its first epoch); in any other folder every entry is someone else's.
    foreign = foreign_entries(out_dir) if folder.used_before else folder.entries()
    if foreign:
        shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        return FileExistsError(f"{out_dir} holds files that are not an mlkd run ({shown}); mlkd writes runs into "
                               "a new or empty folder only: choose another --output"), None
    return None, None


def _changed_settings(saved: dict[str, Any], cfg: RunConfig, out_dir: Path) -> ValueError | None:
    """The error for a resume whose settings differ from the run's own, or None."""
    saved, now = resume_comparable(saved), resume_comparable(cfg.to_dict())  # skip_unreadable may change
    changed = [f"{k}: {saved[k]!r} -> {now[k]!r}" for k in now
               if k not in RESUME_MAY_CHANGE and k in saved and saved[k] != now[k]]
    if not changed:
        return None
    return ValueError(f"--resume continues the run in {out_dir} exactly as it was configured, but these settings "
                      f"differ from it: {'; '.join(changed)}. Resume with the original settings: "
                      f"`--config {out_dir / 'config.yaml'} --resume`, or `--output {out_dir} --resume` with no "
                      f"other flags; or start a new run in another --output (--weights {out_dir / 'last.pt'} "
                      "starts from its weights)")


def _best_state(last: dict[str, Any]) -> dict[str, Any]:
    """best.pt's content from the last.pt of the epoch that was the best: the weights and the run's facts."""
    keep = ("model_args", "classes", "config", "input_norm", "folds", "objective", "model", "epoch", "best_map")
    return {k: last[k] for k in keep if k in last}


def _recover_derived(state: dict[str, Any], out_dir: Path) -> None:
    """Bring best.pt up to the committed last.pt after a crash between the two writes.

    An epoch commits by writing last.pt, then best.pt when it is the best so far. A crash in between
    leaves a best.pt of an earlier epoch, while last.pt holds the best epoch's weights: rewrite it.
    """
    best = out_dir / "best.pt"
    if state["best_epoch"] != state["epoch"]:
        return
    try:
        current = load_checkpoint(best)["epoch"] if best.exists() else None
    except ValueError:  # a best.pt that cannot be read is rewritten from last.pt as well
        current = None
    if current != state["epoch"]:
        save_checkpoint(_best_state(state), best)
        log.info("rewrote %s from last.pt (the run stopped while writing it)", best)


def _check_resumed_classes(state: dict[str, Any], classes: list[str], out_dir: Path) -> None:
    """Refuse to resume on data with other labels (the checkpoint's head would not fit)."""
    saved = list(state.get("classes") or [])
    if saved != list(classes):
        root = (state.get("config") or {}).get("data_root")
        raise ValueError(f"--resume: the run in {out_dir} was trained on {len(saved)} classes {saved[:8]}"
                         f"{'...' if len(saved) > 8 else ''}, but the data now has {len(classes)} classes "
                         f"{list(classes)[:8]}{'...' if len(classes) > 8 else ''}; resume with the run's own data "
                         f"(its --data-root was {root!r})")


def _saved_config(cfg: RunConfig) -> RunConfig:
    """The configuration as recorded in config.yaml and checkpoints: how to run it again from scratch."""
    return dataclasses.replace(cfg, resume=False)


def _seed_everything(seed: int) -> None:
    import random

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _write_json(obj: dict[str, Any], path: Path) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2))
