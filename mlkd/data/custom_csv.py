"""The ``csv`` data set: users' own multi-label data in a small CSV format.

Layout under ``root``::

    train.csv, test.csv, val.csv (optional)    header ``image,labels``; one image per line
    classes.txt (optional)                     one label name per line; fixes the classes and their order
    <images, anywhere under root>

``image`` is a path relative to ``root``; ``labels`` is a ``|``-separated list of label names (spaces
around names are ignored), empty for an image with no label. Example::

    image,labels
    photos/001.jpg,cat|dog
    photos/002.png,
    "photos/with,comma.jpg",dog

Without ``classes.txt`` the classes are the sorted union of the names used in every split file present,
so all splits share one class order. Training validates on ``val.csv`` when the root holds one
(`CsvDataset.own_val_split`), else it carves its validation images from ``train.csv`` (``val_fraction``,
seeded). Files are read as UTF-8 unless the ``encoding`` option names another text encoding. Image paths
must stay inside ``root`` (no absolute paths, no ``..`` that leaves it) unless ``allow_outside_root`` is
set. Accepted with a warning, once per root: a label name that contains ``;``, ``,`` or a tab (the file
may use the wrong label separator), an image listed twice in one split file or in two split files, and
class names that differ only in case. ``docs/data.md`` describes the format for users.
"""
from __future__ import annotations

import codecs
import csv
import logging
import os
from pathlib import Path

import numpy as np

from mlkd.data.base import DataFormatError, ImageListDataset, Transform, require_file, require_root
from mlkd.data.registry import register_dataset

logger = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
HEADER = ["image", "labels"]
_LAYOUT = "train.csv and test.csv (optionally val.csv and classes.txt) with the header 'image,labels'"
# Characters that, inside one label name, suggest the file separates labels with something other than '|'.
SUSPECT_SEPARATORS = (";", ",", "\t")
# The format in a few lines, for `mlkd list` and the train/distill help (docs/data.md has the full text).
FORMAT_SUMMARY = (
    "csv data set (--dataset csv --data-root DIR): DIR holds train.csv and test.csv (and optionally val.csv, "
    "the validation images; without it they are carved from train.csv) with the header 'image,labels'; one image per "
    "line: a path relative to DIR, then its labels separated by '|' (e.g. img/1.jpg,cat|dog; empty for no "
    "label). An optional classes.txt (one name per line) fixes the classes and their order. Options: "
    "--dataset-option skip_unreadable=true leaves out missing or broken images; encoding=latin-1 reads "
    "files that are not UTF-8; allow_outside_root=true allows image paths outside DIR. See docs/data.md."
)


# How many examples a warning about repeated images or look-alike class names shows.
_EXAMPLES = 3

# (file or root, kind) already warned about: a run builds the same data set several times (training and
# validation views, the pre-flight check), and each warning is worth reading once.
_WARNED: set[tuple[Path, str]] = set()


def check_text_encoding(encoding: object) -> str:
    """Return ``encoding`` if it names a text encoding; else raise `ValueError` with examples.

    `codecs.lookup` also knows codecs that are not text encodings (``rot13``, ``base64``, ``hex``):
    ``open`` refuses them with a bare `LookupError`, so they are refused here, with the fix.
    """
    try:
        is_text = codecs.lookup(encoding)._is_text_encoding  # type: ignore[arg-type]
    except (LookupError, TypeError):
        is_text = None
    if not is_text:
        kind = "is not a known encoding" if is_text is None else "is a codec but not a text encoding"
        raise ValueError(f"csv option encoding={encoding!r} {kind}; name the text encoding of the CSV files, "
                         "e.g. --dataset-option encoding=utf-8 (the default), latin-1 or cp1252")
    return str(encoding)


def _open_text(path: Path, encoding: str):
    # utf-8-sig: spreadsheet programs often write a byte-order mark that would corrupt the header.
    return open(path, encoding="utf-8-sig" if codecs.lookup(encoding).name == "utf-8" else encoding, newline="")


def _encoding_error(path: Path, encoding: str, exc: UnicodeDecodeError) -> DataFormatError:
    return DataFormatError(
        f"{path}: not valid {encoding} text (byte {exc.object[exc.start:exc.start + 1]!r} at offset {exc.start}). "
        "Re-save the file as UTF-8, or name its encoding with --dataset-option encoding=latin-1 (or cp1252, ...)."
    )


def read_split_csv(path: Path, encoding: str = "utf-8") -> list[tuple[int, str, list[str]]]:
    """Parse one split file.

    Args:
        path: ``<split>.csv``.
        encoding: the file's text encoding (a byte-order mark is skipped for UTF-8).

    Returns:
        ``(line number, image path, label names)`` for every non-blank line after the header.

    Raises:
        DataFormatError: wrong header, a line without exactly two fields, an empty image path, or an
            empty name inside a label list (e.g. ``cat||dog``), or bytes that are not valid in
            ``encoding``; each message names the file (and the line where known).
    """
    try:
        return _read_split_rows(path, encoding)
    except UnicodeDecodeError as exc:
        raise _encoding_error(path, encoding, exc) from None


def _read_split_rows(path: Path, encoding: str) -> list[tuple[int, str, list[str]]]:
    rows = []
    with _open_text(path, encoding) as f:
        reader = csv.reader(f)
        try:
            header = next(reader, None)
            if header is None or [h.strip() for h in header] != HEADER:
                raise DataFormatError(
                    f"{path}:1: the header must be 'image,labels', got {','.join(header or [])!r}."
                )
            for fields in reader:
                line = reader.line_num
                if not fields or (len(fields) == 1 and not fields[0].strip()):
                    continue
                if len(fields) != 2:
                    raise DataFormatError(
                        f"{path}:{line}: expected 2 fields (image,labels), got {len(fields)}. Quote image "
                        "paths that contain commas and separate labels with '|'."
                    )
                image, labels = fields[0].strip(), fields[1].strip()
                if not image:
                    raise DataFormatError(f"{path}:{line}: the image path is empty.")
                names = [n.strip() for n in labels.split("|")] if labels else []
                if "" in names:
                    raise DataFormatError(
                        f"{path}:{line}: empty label name in {labels!r}. Separate names with a single '|' "
                        "and leave the field empty for an image without labels."
                    )
                rows.append((line, image, names))
        except csv.Error as exc:
            raise DataFormatError(f"{path}:{reader.line_num}: malformed CSV ({exc}).") from exc
    return rows


def read_classes_txt(path: Path, encoding: str = "utf-8") -> list[str]:
    """Label names from ``classes.txt``, one per line (blank lines ignored), in file order.

    Raises:
        DataFormatError: a name listed twice, a name containing ``|``, no name at all, or bytes that are
            not valid in ``encoding``.
    """
    classes: list[str] = []
    try:
        with _open_text(path, encoding) as f:
            text = f.read()
    except UnicodeDecodeError as exc:
        raise _encoding_error(path, encoding, exc) from None
    for line_no, line in enumerate(text.splitlines(), start=1):
        name = line.strip()
        if not name:
            continue
        if "|" in name:
            raise DataFormatError(f"{path}:{line_no}: the name {name!r} contains '|', the label separator.")
        if name in classes:
            raise DataFormatError(f"{path}:{line_no}: the name {name!r} is listed twice.")
        classes.append(name)
    if not classes:
        raise DataFormatError(f"{path}: no class names. Write one name per line, or delete the file.")
    return classes


@register_dataset("csv", splits=SPLITS)
class CsvDataset(ImageListDataset):
    """Users' own data in the ``csv`` format (see the module doc); splits ``train``, ``val``, ``test``.

    Options:
        skip_unreadable: leave out missing or undecodable images instead of raising (see
            `ImageListDataset`).
        encoding: text encoding of the CSV files and ``classes.txt`` (default UTF-8).
        allow_outside_root: accept image paths that are absolute or leave ``root`` through ``..``
            (refused by default, so that a CSV file cannot make mlkd read files elsewhere unasked).
    """

    def __init__(
        self,
        root: str | os.PathLike | None,
        split: str,
        transform: Transform | None = None,
        *,
        skip_unreadable: bool = False,
        encoding: str = "utf-8",
        allow_outside_root: bool = False,
    ) -> None:
        root_dir = require_root(root, "csv", _LAYOUT)
        check_text_encoding(encoding)
        require_file(root_dir / f"{split}.csv", f"{split} split", f"Write {split}.csv with the header 'image,labels'.")
        # Every split file is read, so that the class list (and order) is the same whichever split is built.
        parsed = {s: read_split_csv(root_dir / f"{s}.csv", encoding)
                  for s in SPLITS if (root_dir / f"{s}.csv").is_file()}
        _warn_suspect_separators(root_dir / f"{split}.csv", parsed[split])
        if not parsed[split]:
            raise DataFormatError(
                f"{root_dir / f'{split}.csv'}: the {split} split lists no image (only the header). Add one line "
                "per image (path,labels), or delete the file if the split is optional (val.csv)."
            )
        if not allow_outside_root:
            _check_inside_root(root_dir / f"{split}.csv", parsed[split])
        classes_file = root_dir / "classes.txt"
        if classes_file.is_file():
            classes = read_classes_txt(classes_file, encoding)
            known = set(classes)
            for s, rows in parsed.items():
                for line, _, names in rows:
                    unknown = [n for n in names if n not in known]
                    if unknown:
                        raise DataFormatError(
                            f"{root_dir / f'{s}.csv'}:{line}: label {unknown[0]!r} is not in {classes_file}. "
                            "Add it there, or fix the label."
                        )
        else:
            classes = sorted({n for rows in parsed.values() for _, _, names in rows for n in names})
            if not classes:
                files = ", ".join(str(root_dir / f"{s}.csv") for s in parsed)
                raise DataFormatError(
                    f"{files}: no label is used anywhere. Label the images, or list the classes in classes.txt."
                )
        _warn_repeated_images(root_dir, parsed)
        _warn_case_variants(root_dir, classes)
        column = {name: k for k, name in enumerate(classes)}
        rows = parsed[split]
        targets = np.zeros((len(rows), len(classes)), dtype=np.uint8)
        for r, (_, _, names) in enumerate(rows):
            targets[r, [column[n] for n in names]] = 1
        super().__init__(
            [root_dir / image for _, image, _ in rows],
            targets,
            classes,
            transform,
            skip_unreadable,
            origins=[f"{split}.csv:{line}" for line, _, _ in rows],
        )

    @staticmethod
    def own_val_split(root: str | os.PathLike | None) -> str | None:
        """``"val"`` when ``root`` holds ``val.csv``, else ``None`` (training then carves validation images
        from ``train.csv``); see `mlkd.data.registry.own_val_split`."""
        return "val" if root is not None and (Path(root) / "val.csv").is_file() else None


def _check_inside_root(path: Path, rows: list[tuple[int, str, list[str]]]) -> None:
    """Refuse image paths that are absolute or climb out of the data root with ``..``.

    The check is on the written path, not on the resolved one, so a symbolic link inside the root that
    points to another disk (a common way to lay out data) is still accepted.
    """
    for line, image, _ in rows:
        written = image.replace("\\", "/")  # a Windows path, written on any system
        drive = len(written) > 1 and written[1] == ":" and written[0].isalpha()
        if written.startswith("/") or drive or os.path.normpath(written).split("/")[0] == "..":
            raise DataFormatError(
                f"{path}:{line}: the image path {image!r} leaves the data root. Write paths relative to "
                "--data-root, or pass --dataset-option allow_outside_root=true to read files elsewhere."
            )


def _first_time(where: Path, kind: str) -> bool:
    """True the first time this process asks about warning ``kind`` for ``where`` (see `_WARNED`)."""
    if (where, kind) in _WARNED:
        return False
    _WARNED.add((where, kind))
    return True


def _image_key(image: str) -> str:
    """The written image path in a form where ``img/a.png``, ``./img/a.png`` and ``img//a.png`` agree."""
    return os.path.normpath(image.replace("\\", "/"))


def _warn_repeated_images(root: Path, parsed: dict[str, list[tuple[int, str, list[str]]]]) -> None:
    """Warn (once per root) about images listed twice in one split file, or in two split files.

    A repeated line counts as another image: training sees it more often, a validation set carved from
    ``train.csv`` can hold a copy of a training image (validation mAP then rises towards 1), and an image
    in both ``train.csv`` and ``test.csv`` is scored on after being trained on.
    """
    lines: dict[str, dict[str, list[int]]] = {}  # split -> image key -> its line numbers
    for split, rows in parsed.items():
        lines[split] = {}
        for line, image, _ in rows:
            lines[split].setdefault(_image_key(image), []).append(line)
    for split, images in lines.items():
        repeated = {key: at for key, at in images.items() if len(at) > 1}
        if repeated and _first_time(root / f"{split}.csv", "repeated"):
            examples = "; ".join(f"{key} at lines {', '.join(map(str, at))}"
                                 for key, at in list(repeated.items())[:_EXAMPLES])
            effect = ("training sees them more often, and validation carved from train.csv (when there is no "
                      "val.csv) can hold copies of training images" if split == "train" else
                      f"the {split} mAP counts them more than once")
            logger.warning(
                "%s lists %d image(s) more than once (%d extra lines; e.g. %s): each copy counts as another "
                "image, so %s. Remove the repeated lines.",
                root / f"{split}.csv", len(repeated), sum(len(at) - 1 for at in repeated.values()), examples, effect,
            )
    for first, second in (("train", "test"), ("train", "val"), ("val", "test")):
        if first not in lines or second not in lines:
            continue
        shared = [key for key in lines[first] if key in lines[second]]
        if shared and _first_time(root, f"shared {first} {second}"):
            examples = "; ".join(f"{key} ({first}.csv:{lines[first][key][0]}, {second}.csv:{lines[second][key][0]})"
                                 for key in shared[:_EXAMPLES])
            logger.warning(
                "%d image(s) are listed in both %s.csv and %s.csv in %s (e.g. %s): the %s metrics then score "
                "images the model was trained or selected on. List each image in one split file only.",
                len(shared), first, second, root, examples, "test" if second == "test" else "validation",
            )


def _warn_case_variants(root: Path, classes: list[str]) -> None:
    """Warn (once per root) about class names that differ only in case: each is a class of its own."""
    groups: dict[str, list[str]] = {}
    for name in classes:
        groups.setdefault(name.casefold(), []).append(name)
    variants = [names for names in groups.values() if len(names) > 1]
    if variants and _first_time(root, "case"):
        examples = "; ".join(" and ".join(map(repr, names)) for names in variants[:_EXAMPLES])
        logger.warning(
            "%s: %d group(s) of class names differ only in case (e.g. %s); each name is a class of its own. "
            "If they mean one label, write it the same way everywhere.",
            root, len(variants), examples,
        )


def _warn_suspect_separators(path: Path, rows: list[tuple[int, str, list[str]]]) -> None:
    """Warn once per file when label names contain characters that look like a different label separator."""
    suspects = [(line, name) for line, _, names in rows for name in names
                if any(c in name for c in SUSPECT_SEPARATORS)]
    if suspects and _first_time(path, "separator"):
        line, name = suspects[0]
        parts = name
        for sep in SUSPECT_SEPARATORS:
            parts = parts.replace(sep, "|")
        logger.warning(
            "%s: %d label names contain ';', ',' or a tab (e.g. %r at line %d); each is read as ONE class. "
            "mlkd separates labels with '|': write %r if these are several labels.",
            path, len(suspects), name, line, "|".join(p.strip() for p in parts.split("|")),
        )
