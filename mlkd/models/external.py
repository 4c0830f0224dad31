"""Teachers trained outside mlkd: a timm classifier from its state dict, or any ``nn.Module`` (issue 22).

A distiller reads `ModelOutput` only, so a teacher from elsewhere is wrapped in `ExternalTeacher`, whose
``forward`` returns one:

- ``logits [N, q']``: the teacher's outputs re-indexed **by class name** to the data set's classes, so a
  teacher trained on another order or on a superset of classes (an 80-class COCO teacher for a
  20-class student) lines up with the student column for column. ``q' = q`` unless data-set classes the
  teacher lacks are excluded (``missing_labels="exclude"``); ``data_columns`` then names the data-set
  column of each output column;
- ``features``: for a timm model, the stage maps of ``forward_intermediates`` ending with the final map
  that its classifier reads, as `MultiLabelModel` gives them (NCHW, shallow to deep); for a module, what
  it returns (a `ModelOutput`'s or a dict's ``"features"``), else none;
- ``label_embeddings``: a module's own when it returns them (re-indexed like the logits), else None. A
  classifier has none; `mlkd.models.fitted_head` fits a label-wise head for the methods that need them.

The classes of a teacher come from a text file (`read_class_names`) or a list; `map_classes` matches them
to the data set's and says which are missing. `create_timm_teacher` builds the architecture and loads a
weights file with ``torch.load(weights_only=True)``, refusing (before any training) files that are not a
state dict, keys that do not fit the architecture and a classifier whose size differs from the class list.
"""
from __future__ import annotations

import difflib
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import timm
import torch
from torch import Tensor, nn

from mlkd.models.model import feature_channels, final_map_mode, stage_features
from mlkd.models.timm_backbone import final_layout
from mlkd.models.weights import read_state_dict
from mlkd.outputs import ModelOutput

logger = logging.getLogger(__name__)

MISSING_LABELS = ("error", "exclude")
# How many names or keys an error message lists before summarising the rest as a count.
_SHOWN = 8


def _names(names: Sequence[str], shown: int = _SHOWN) -> str:
    listed = ", ".join(repr(n) for n in names[:shown])
    return listed + (f" and {len(names) - shown} more" if len(names) > shown else "")


def read_class_names(path: str | Path) -> list[str]:
    """The class names of a text file: one per line, in the teacher's output order.

    Leading and trailing white space is stripped and blank lines are skipped; a UTF-8 byte-order mark is
    ignored.

    Args:
        path: the text file (e.g. ``classes.txt`` beside the weights).

    Returns:
        The names, in file order.

    Raises:
        FileNotFoundError: no such file.
        ValueError: a folder, not UTF-8 text, no name at all, or a name listed twice (with both lines).
    """
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"--teacher-classes {path} is a folder; pass the text file of the teacher's classes "
                         "(one name per line, in its output order)")
    if not path.is_file():
        raise FileNotFoundError(f"--teacher-classes {path} does not exist; pass the text file of the teacher's "
                                "classes (one name per line, in its output order)")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        raise ValueError(f"--teacher-classes {path} is not UTF-8 text (byte 0x{err.object[err.start]:02x} at offset "
                         f"{err.start}); save it as UTF-8, one class name per line") from None
    names: list[str] = []
    first_line: dict[str, int] = {}
    for line_no, line in enumerate(text.splitlines(), start=1):
        name = line.strip()
        if not name:
            continue
        if name in first_line:
            raise ValueError(f"--teacher-classes {path}:{line_no}: {name!r} is listed twice (first on line "
                             f"{first_line[name]}); each output of the teacher has one class")
        first_line[name] = line_no
        names.append(name)
    if not names:
        raise ValueError(f"--teacher-classes {path} holds no class name; write one name per line, in the "
                         "teacher's output order")
    return names


@dataclass(frozen=True)
class ClassMap:
    """How a teacher's outputs line up with a data set's classes.

    Attributes:
        data_columns: the data-set column of each kept teacher output, ascending (all ``q`` columns
            unless labels are excluded).
        teacher_columns: the teacher's output column of each, in the same order.
        missing: data-set classes the teacher has no output for (excluded from distillation).
        unused: how many teacher classes the data set does not have (ignored).
    """

    data_columns: list[int]
    teacher_columns: list[int]
    missing: list[str] = field(default_factory=list)
    unused: int = 0

    @property
    def identity(self) -> bool:
        """True when the teacher's outputs are the data set's classes in the same order."""
        return self.unused == 0 and not self.missing and self.teacher_columns == list(range(len(self.teacher_columns)))


def map_classes(teacher_classes: Sequence[str], data_classes: Sequence[str], missing_labels: str = "error",
                source: str = "the teacher") -> ClassMap:
    """Match a teacher's classes to a data set's by name.

    Args:
        teacher_classes: the teacher's classes, in its output order.
        data_classes: the data set's classes, in the student's output order.
        missing_labels: ``"error"``: a data-set class the teacher lacks is an error; ``"exclude"``:
            such classes are left out of the distillation terms (`ClassMap.missing`).
        source: names the teacher's class list in messages (e.g. ``"--teacher-classes classes.txt"``).

    Returns:
        The `ClassMap`.

    Raises:
        ValueError: a repeated teacher class; missing classes under ``"error"`` (all of them listed, with
            the option that excludes them); no class in common at all.
    """
    if missing_labels not in MISSING_LABELS:
        raise ValueError(f"missing_labels must be one of {MISSING_LABELS}, got {missing_labels!r}")
    teacher_classes = [str(c) for c in teacher_classes]
    column = {}
    for k, name in enumerate(teacher_classes):
        if name in column:
            raise ValueError(f"{source} lists {name!r} twice; each output of the teacher has one class")
        column[name] = k
    missing = [c for c in data_classes if c not in column]
    shared = [j for j, c in enumerate(data_classes) if c in column]
    if not shared:
        raise ValueError(f"the teacher was trained on classes {_names(teacher_classes)} ({source}), none of which "
                         f"the data set has ({_names(list(data_classes))}); names must match exactly (case and spaces "
                         "included): check the class list, or distil from a teacher trained on these classes")
    if missing and missing_labels == "error":
        raise ValueError(f"the teacher has no output for {len(missing)} of the data set's {len(data_classes)} "
                         f"classes: {', '.join(map(repr, missing))} (its classes come from {source}). Rename them "
                         "in the class list if they are there under another name, or pass --teacher-missing-labels "
                         "exclude (teacher_missing_labels='exclude') to leave them out of the distillation terms "
                         "(the student still learns them from the labels)")
    unused = len(teacher_classes) - len(shared)
    return ClassMap([j for j in shared], [column[data_classes[j]] for j in shared], missing, unused)


def check_timm_name(name: str) -> None:
    """Raise a ValueError with close names when ``name`` (optionally ``arch.tag``) is not a timm model."""
    arch, _ = timm.models.split_model_name_tag(name)
    if timm.is_model(arch):
        return
    close = difflib.get_close_matches(arch, timm.list_models(), n=5, cutoff=0.6)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    raise ValueError(f"--teacher-model {name!r} is not a timm model.{hint} Pass the timm architecture the weights "
                     "were trained with (timm.list_models() lists them)")


def timm_input_config(name: str) -> dict[str, Any]:
    """The input a timm architecture's pretrained weights expect, from its ``pretrained_cfg``.

    A teacher fine-tuned from those weights usually keeps their normalisation; its resolution is often
    the one it was fine-tuned at, which the configuration cannot know (hence ``--teacher-img-size``).

    Args:
        name: a timm name, optionally with a pretrained tag (``resnet50.a1_in1k``); without one, the
            default tag's configuration.

    Returns:
        ``{"img_size": int, "mean": [3 floats], "std": [3 floats], "source": "timm's pretrained_cfg of
        resnet50.a1_in1k"}``.

    Raises:
        ValueError: an unknown name, or one whose timm entry has no pretrained configuration.
    """
    check_timm_name(name)
    cfg = timm.models.get_pretrained_cfg(name)
    if cfg is None or not cfg.input_size or cfg.mean is None or cfg.std is None:
        raise ValueError(f"timm has no pretrained configuration for {name!r}, so its input is unknown; pass "
                         "--teacher-img-size PX --teacher-mean R,G,B --teacher-std R,G,B (the values the teacher "
                         "was trained with), or --teacher-same-input")
    height, width = cfg.input_size[-2:]
    if height != width:
        logger.warning("timm's pretrained_cfg of %s has a %dx%d input; the teacher gets %d x %d (pass "
                       "--teacher-img-size to choose)", name, height, width, height, height)
    tag = f"{cfg.architecture}.{cfg.tag}" if cfg.tag else cfg.architecture
    return {"img_size": int(height), "mean": [float(v) for v in cfg.mean], "std": [float(v) for v in cfg.std],
            "source": f"timm's pretrained_cfg of {tag}"}


def _module_name(root: nn.Module, target: nn.Module) -> str | None:
    for name, module in root.named_modules():
        if module is target:
            return name
    return None


def _common_prefix(keys: Sequence[str]) -> str | None:
    """The first dotted component every key shares (``model.``), or None."""
    firsts = {k.split(".", 1)[0] for k in keys}
    if len(firsts) != 1 or not all("." in k for k in keys):
        return None
    return f"{firsts.pop()}."


def load_teacher_state(model: nn.Module, path: str | Path, name: str, num_classes: int, classes_from: str) -> None:
    """Load a weights file into a timm classifier, refusing anything that does not fit exactly.

    Args:
        model: the timm model, built with ``num_classes`` outputs.
        path: the weights file (a state dict, or a checkpoint dict holding one under ``"model"`` or
            ``"state_dict"``); read with ``torch.load(weights_only=True)``.
        name: the timm name, for messages.
        num_classes: the length of the class list.
        classes_from: where the class list came from, for messages.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a state dict (a pickled model, a text or corrupt file, ...), a classifier with
            another number of outputs, or keys that do not fit the architecture (a few listed).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--teacher-weights {path} does not exist; pass the teacher's state dict file")
    try:
        state, _ = read_state_dict(path)
    except ValueError as err:
        raise ValueError(f"--teacher-weights {path} is not a state dict mlkd can read: {err}. mlkd reads weights "
                         "only (never a pickled object), so save the trained model's weights alone: "
                         "torch.save(model.state_dict(), 'teacher.pth'). A checkpoint of timm's train.py also "
                         "holds its arguments: extract its 'state_dict' with timm's clean_checkpoint.py") from None
    own = model.state_dict()
    prefix = _common_prefix(list(state))
    if prefix and not any(k in own for k in state):
        stripped = {k[len(prefix):]: v for k, v in state.items()}
        if any(k in own for k in stripped):
            logger.info("--teacher-weights %s: removing the prefix %r of every key", path, prefix)
            state = stripped
    classifier = _module_name(model, model.get_classifier()) if hasattr(model, "get_classifier") else None
    if classifier:
        weight = state.get(f"{classifier}.weight")
        want = own.get(f"{classifier}.weight")
        if isinstance(weight, Tensor) and want is not None and weight.shape[0] != want.shape[0]:
            raise ValueError(f"the classifier of --teacher-weights {path} ({classifier}.weight) has {weight.shape[0]} "
                             f"outputs, but the teacher's class list ({classes_from}) has {num_classes} names. Pass "
                             f"--teacher-classes with the {weight.shape[0]} classes the teacher was trained on, in its "
                             "output order")
    # Files written by other libraries may lack BatchNorm's step counters; they do not affect the outputs.
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in own]
    mismatched = [f"{k} {tuple(v.shape)} in the file, {tuple(own[k].shape)} in {name}"
                  for k, v in state.items() if k in own and v.shape != own[k].shape]
    if missing or unexpected or mismatched:
        parts = [f"{label} ({len(keys)}): {', '.join(keys[:5])}{' ...' if len(keys) > 5 else ''}"
                 for label, keys in (("missing in the file", missing), ("not in the model", unexpected),
                                     ("other shapes", mismatched)) if keys]
        raise ValueError(f"--teacher-weights {path} does not fit the timm model {name!r} "
                         f"({len(state)} tensors in the file, {len(own)} in the model): {'; '.join(parts)}. "
                         "Pass the --teacher-model the weights were trained with (same architecture and options)")
    model.load_state_dict({k: v for k, v in state.items()}, strict=False)


def create_timm_teacher(name: str, weights: str | Path, classes: Sequence[str], classes_from: str) -> nn.Module:
    """A timm classifier with one output per class, its trained weights loaded (`load_teacher_state`).

    Args:
        name: the timm architecture (``--teacher-model``).
        weights: its state dict file (``--teacher-weights``).
        classes: the teacher's classes in its output order (their number sizes the classifier).
        classes_from: where they came from, for messages.

    Returns:
        The timm model in eval mode (on the CPU).

    Raises:
        ValueError: an unknown name; weights that are not a state dict or do not fit (see `load_teacher_state`).
        FileNotFoundError: no weights file.
    """
    check_timm_name(name)
    try:
        model = timm.create_model(name, num_classes=len(classes), pretrained=False)
    except (TypeError, ValueError, RuntimeError) as err:
        raise ValueError(f"timm could not build --teacher-model {name!r} with {len(classes)} classes "
                         f"({type(err).__name__}: {err})") from None
    load_teacher_state(model, weights, name, len(classes), classes_from)
    return model.eval()


def _is_timm_classifier(model: nn.Module) -> bool:
    """Whether ``model`` has timm's generic members (stage maps, final map, head)."""
    return all(hasattr(model, a) for a in ("forward_features", "forward_head", "forward_intermediates",
                                            "feature_info", "num_features"))


class ExternalTeacher(nn.Module):
    """A frozen teacher trained elsewhere, returning a `ModelOutput` in the data set's classes.

    Args:
        model: a timm classifier (any model with timm's ``forward_intermediates``/``forward_head``), or
            any module whose ``forward(x)`` returns logits ``[N, t]`` (a tensor), a `ModelOutput`, or a
            dict with ``"logits"`` (and optionally ``"features"``, ``"label_embeddings"``); ``t`` is the
            number of ``teacher_classes``.
        teacher_classes: the teacher's classes, in its output order.
        data_classes: the data set's classes.
        missing_labels: what to do with data-set classes the teacher lacks (see `map_classes`).
        description: how messages and the run summary name the teacher.
        classes_from: where ``teacher_classes`` came from, for messages.

    Attributes:
        class_map: the `ClassMap`.
        data_columns: data-set column of each output column (``class_map.data_columns``).
        classes: the data-set classes of the output columns, in order.
        num_classes: output columns ``q'``.
        kind: ``"timm"`` or ``"module"``.
        feature_channels: channels of each feature map (timm models), else None until unknown.
        final_channels: channels of the final map (``features[-1]``) when known, else None.
    """

    def __init__(self, model: nn.Module, teacher_classes: Sequence[str], data_classes: Sequence[str], *,
                 missing_labels: str = "error", description: str | None = None,
                 classes_from: str = "the teacher's class list") -> None:
        super().__init__()
        self.model = model
        self.teacher_classes = [str(c) for c in teacher_classes]
        self.classes_from = classes_from
        self.class_map = map_classes(self.teacher_classes, list(data_classes), missing_labels, classes_from)
        self.data_columns = list(self.class_map.data_columns)
        self.classes = [data_classes[j] for j in self.data_columns]
        self.num_classes = len(self.data_columns)
        self.in_chans = 3
        self.description = description or f"module {type(model).__name__}"
        # A buffer, so that the index follows the teacher to its device.
        self.register_buffer("teacher_columns", torch.tensor(self.class_map.teacher_columns, dtype=torch.long),
                             persistent=False)
        self.kind = "timm" if _is_timm_classifier(model) else "module"
        self.feature_channels: list[int] | None = None
        self.final_channels: int | None = None
        if self.kind == "timm":
            self.layout = final_layout(model)
            stages = [int(info["num_chs"]) for info in model.feature_info]
            self._final_mode = final_map_mode(stages, int(model.num_features), self.layout)
            self.feature_channels = feature_channels(stages, int(model.num_features), self._final_mode)
            self.final_channels = self.feature_channels[-1] if self._final_mode != "none" else None
            self.in_chans = int(getattr(model, "in_chans", None) or model.pretrained_cfg.get("input_size", (3,))[0])

    def _columns(self, t: Tensor, what: str) -> Tensor:
        """``t [N, t, ...]`` re-indexed to the output columns ``[N, q', ...]``; checks the class count."""
        if t.dim() < 2 or t.shape[1] != len(self.teacher_classes):
            raise ValueError(f"the teacher ({self.description}) returned {what} of shape {tuple(t.shape)}, but its "
                             f"class list ({self.classes_from}) has {len(self.teacher_classes)} names: expected "
                             f"[N, {len(self.teacher_classes)}{', d' if what == 'label_embeddings' else ''}]. Pass "
                             "the teacher's classes in its output order (--teacher-classes)")
        if self.class_map.identity:
            return t
        return t.index_select(1, self.teacher_columns)

    def forward(self, x: Tensor) -> ModelOutput:
        """The teacher's outputs in the data set's classes.

        Args:
            x: ``[N, C, H, W]`` images as the teacher expects them (its resolution and normalisation).

        Returns:
            `ModelOutput` with ``logits [N, q']`` (column ``j`` is data-set class ``data_columns[j]``),
            ``label_embeddings [N, q', d]`` or None, and ``features`` (see the module doc).
        """
        if self.kind == "timm":
            return self._timm_forward(x)
        return self._module_forward(x)

    def _timm_forward(self, x: Tensor) -> ModelOutput:
        try:
            final, stages = self.model.forward_intermediates(x)
        except NotImplementedError:  # a timm model without stage maps: the final map alone
            final = self.model.forward_features(x)
            features = [final] if final.dim() == 4 and self.layout == "NCHW" else []
        else:
            features = stage_features(final, stages, self.layout, self._final_mode, len(self.feature_channels))
        logits = self.model.forward_head(final)
        return ModelOutput(logits=self._columns(logits, "logits"), label_embeddings=None, features=features)

    def _module_forward(self, x: Tensor) -> ModelOutput:
        out = self.model(x)
        if isinstance(out, Tensor):
            logits, embeddings, features = out, None, []
        elif isinstance(out, ModelOutput):
            logits, embeddings, features = out.logits, out.label_embeddings, list(out.features)
        elif isinstance(out, Mapping):
            if "logits" not in out:
                raise ValueError(f"the teacher ({self.description}) returned a dict without 'logits' (keys: "
                                 f"{', '.join(map(str, out))}); return the logits [N, {len(self.teacher_classes)}] "
                                 "under 'logits'")
            logits, embeddings, features = out["logits"], out.get("label_embeddings"), list(out.get("features") or [])
        else:
            raise TypeError(f"the teacher ({self.description}) returned {type(out).__name__}; a teacher module must "
                            "return its logits [N, q] as a tensor, a ModelOutput, or a dict with 'logits' (and "
                            "optionally 'features': a list of [N, C, H, W] maps, shallow to deep)")
        if not isinstance(logits, Tensor):
            raise TypeError(f"the teacher ({self.description}) returned logits of type {type(logits).__name__}; "
                            "expected a tensor [N, q]")
        if logits.dim() != 2:
            raise ValueError(f"the teacher ({self.description}) returned logits of shape {tuple(logits.shape)}; "
                             f"expected [N, {len(self.teacher_classes)}]")
        if embeddings is not None:
            embeddings = self._columns(embeddings, "label_embeddings")
        if self.final_channels is None and features and features[-1].dim() == 4:
            self.final_channels = int(features[-1].shape[1])
        return ModelOutput(logits=self._columns(logits, "logits"), label_embeddings=embeddings, features=features)

    def forward_logits(self, x: Tensor) -> Tensor:
        """The logits alone ``[N, q']`` (timm models skip the stage maps)."""
        if self.kind == "timm":
            return self._columns(self.model.forward_head(self.model.forward_features(x)), "logits")
        return self.forward(x).logits

    def final_map(self, x: Tensor) -> Tensor:
        """The final feature map ``[N, C, H, W]`` (``forward(x).features[-1]``), what a fitted head reads.

        Raises:
            ValueError: the teacher gives no spatial final map (a module returning logits only, or a
                token model such as a ViT, whose last map is a stage map).
        """
        features = self.forward(x).features
        if not features or features[-1].dim() != 4:
            raise ValueError(f"the teacher ({self.description}) gives no final feature map [N, C, H, W]; return "
                             "'features' (a list of maps, the last the one its classifier reads)")
        return features[-1]
