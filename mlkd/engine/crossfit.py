"""Cross-fitted teachers: K teachers, each trained without one fold, each teaching the fold it never saw.

Why and how the folds are drawn: `mlkd.data.folds`. The teachers' runs (``mlkd train --hold-out-fold k/K``)
record in their checkpoints which fold they held out and a fingerprint of the whole training set the folds
cut (`fold_record`); a student's run (``--fold-teachers``) refuses teachers that do not cover every fold
once or that cut another training set, since a fold teacher would then teach images it was trained on.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable

from torch import Tensor, nn
from torch.utils.data import Dataset

from mlkd.config import RunConfig
from mlkd.data.splits import data_fingerprint
from mlkd.engine.checkpoint import load_checkpoint
from mlkd.outputs import ModelOutput


def fold_record(train_set: Dataset, hold_out_fold: list[int]) -> dict[str, Any]:
    """What a fold teacher's checkpoints record under ``"folds"``: the fold it held out, the number of folds,
    and the size and `data_fingerprint` of the whole training set (``train_set`` is the run's, without the fold)."""
    whole = getattr(train_set, "held_out_from", train_set)
    return {"held_out": int(hold_out_fold[0]), "count": int(hold_out_fold[1]), "train_images": len(whole),
            "train_sha256": data_fingerprint(whole)}


def order_fold_teachers(paths: list[str], train_set: Dataset) -> list[str]:
    """``paths`` in fold order (entry k held out fold k), checked against the student's training set.

    Raises:
        FileNotFoundError: a checkpoint that does not exist.
        ValueError: a checkpoint not trained with ``--hold-out-fold``, folds counted differently, a fold held
            out twice or by none, or teachers whose folds cut another training set than ``train_set``.
    """
    records = {}
    for path in paths:
        if not Path(path).is_file():
            raise FileNotFoundError(f"--fold-teachers {path} does not exist; pass the best.pt of each "
                                    "`mlkd train --hold-out-fold k/K` run")
        record = load_checkpoint(path).get("folds")
        if not record:
            raise ValueError(f"--fold-teachers {path} was trained on the whole training set; a fold teacher is "
                             "trained with `mlkd train --hold-out-fold k/K` (k = 0 .. K-1)")
        if record["count"] != len(paths):
            raise ValueError(f"--fold-teachers {path} held out fold {record['held_out']} of {record['count']}, but "
                             f"{len(paths)} teachers are given; pass one teacher per fold")
        if record["held_out"] in records:
            raise ValueError(f"--fold-teachers {records[record['held_out']][0]} and {path} both held out fold "
                             f"{record['held_out']}; pass one teacher per fold")
        records[record["held_out"]] = (path, record)
    fingerprint, size = None, len(train_set)
    for k in range(len(paths)):
        path, record = records[k]  # every fold is present: K distinct folds among K teachers
        if record["train_images"] != size or record["train_sha256"] != (fingerprint := fingerprint
                                                                           or data_fingerprint(train_set)):
            raise ValueError(f"--fold-teachers {path} cut a training set of {record['train_images']} images into "
                             f"folds, but this run trains on {size} other or differently carved images; train the "
                             "fold teachers with the student's data settings (data set, splits, val_fraction)")
    return [records[k][0] for k in range(len(paths))]


class FoldTeachers(nn.Module):
    """K frozen teachers, each answering for the training images of the fold it held out.

    Called with the images and their training-set indices, it runs every teacher on its fold's images and
    returns the outputs in the batch's order. Batches from `mlkd.data.folds.FoldBatchSampler` hold one
    fold, so one teacher runs on the whole batch.

    Args:
        teachers: teacher k held out fold k; all with the same input (`ModelInput`) and output shapes.
        fold: ``[N]`` the fold of each training image.
        run: ``(teacher, images) -> ModelOutput`` under the teacher's inference settings
            (`mlkd.engine.teacher.run_teacher`; passed in, as that module builds this one).
    """

    def __init__(self, teachers: list[nn.Module], fold: Tensor, run: Callable[[nn.Module, Tensor], ModelOutput]):
        super().__init__()
        self.members = nn.ModuleList(teachers)
        self.run = run
        self.register_buffer("fold", fold.clone(), persistent=False)

    @property
    def representative(self) -> nn.Module:
        """Teacher 0: the teachers share an architecture and input, so costs and timings are one teacher's."""
        return self.members[0]

    def forward(self, images: Tensor, index: Tensor | None = None) -> ModelOutput:
        """Args: images ``[B, 3, H, W]`` (the teachers' input); index ``[B]`` their training-set indices.

        Returns: the `ModelOutput` of each image's fold teacher, in batch order (float32).
        """
        if index is None:
            raise ValueError("cross-fitted teachers need the training-set index of each image (which teacher "
                             "never saw it)")
        fold = self.fold[index.to(self.fold.device)].to(images.device)
        present = fold.unique().tolist()
        if len(present) == 1:
            return self.run(self.members[present[0]], images)
        parts = {k: (fold == k).nonzero().flatten() for k in present}
        outs = {k: self.run(self.members[k], images.index_select(0, rows)) for k, rows in parts.items()}

        def gather(get) -> Tensor:
            first = get(outs[present[0]])
            whole = first.new_empty((images.shape[0], *first.shape[1:]))
            for k, rows in parts.items():
                whole[rows] = get(outs[k])
            return whole

        sample = outs[present[0]]
        embeddings = None if sample.label_embeddings is None else gather(lambda o: o.label_embeddings)
        features = [gather(lambda o, i=i: o.features[i]) for i in range(len(sample.features))]
        return ModelOutput(gather(lambda o: o.logits), embeddings, features)


def member_config(cfg: RunConfig, path: str) -> RunConfig:
    """``cfg`` with ``path`` as its one teacher (to load, describe and identify fold teacher ``path``)."""
    return dataclasses.replace(cfg, teacher=path, fold_teachers=None)


def check_same_input(inputs: list[Any], paths: list[str]) -> None:
    """Refuse fold teachers that see their images differently (their outputs would not be comparable)."""
    first = (inputs[0].size, inputs[0].stats)
    for path, given in zip(paths[1:], inputs[1:]):
        if (given.size, given.stats) != first:
            raise ValueError(f"--fold-teachers {paths[0]} and {path} take different inputs "
                             f"({first} vs {(given.size, given.stats)}); train every fold's teacher with the same "
                             "settings")


def same_shapes(a: ModelOutput, b: ModelOutput) -> bool:
    """Whether two teachers' outputs on one sample batch have the same parts and shapes."""
    def shape(t: Tensor | None):
        return None if t is None else tuple(t.shape)
    return (shape(a.logits) == shape(b.logits) and shape(a.label_embeddings) == shape(b.label_embeddings)
            and [shape(f) for f in a.features] == [shape(f) for f in b.features])

