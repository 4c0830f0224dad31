"""The accuracy suite's data (``fashion_scenes``) and settings (``mlkd/configs/suite``, benchmarks/accuracy.py).

Scenes are checked against a painter written here (resize each object with PIL, paint it where its
foreground is, later objects on top), and the max-occlusion rule is checked on the painted images.
"""
from __future__ import annotations

import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

import mlkd.data.fashion_mosaic as fm
import mlkd.data.fashion_scenes as fashion_scenes
from mlkd.config import RunConfig
from mlkd.data import create_dataset, dataset_options
from mlkd.data.fashion_mosaic import PALETTE
from synthetic import write_idx_images, write_idx_labels

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import accuracy  # noqa: E402

REAL_DIR = Path("/usr/share/datasets/fashion-mnist")
TRAIN_VALUE, TEST_VALUE = 90, 250  # foreground value of the synthetic train / test items
FG = 16  # the foreground threshold the module doc states


def blob_items(n: int, value: int, seed: int) -> np.ndarray:
    """Items of irregular shapes (an ellipse plus a bar at random places) with constant foreground ``value``."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:28, :28]
    items = np.zeros((n, 28, 28), dtype=np.uint8)
    for i in range(n):
        cy, cx, ry, rx = rng.uniform(9, 19), rng.uniform(9, 19), rng.uniform(4, 12), rng.uniform(4, 12)
        shape = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
        r = rng.integers(0, 24)
        shape[r:r + 4, 2:26] = True
        items[i][shape] = value
    return items


@pytest.fixture
def root(tmp_path, monkeypatch):
    """Synthetic Fashion-MNIST files (train items all of value 90, test items of 250); nothing else is found."""
    monkeypatch.setattr(fm, "SYSTEM_DIR", tmp_path / "system")
    monkeypatch.setenv("MLKD_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "fmnist"
    folder.mkdir()
    for split, n, value in (("train", 50, TRAIN_VALUE), ("t10k", 30, TEST_VALUE)):
        write_idx_images(folder / f"{split}-images-idx3-ubyte.gz", blob_items(n, value, seed=n))
        write_idx_labels(folder / f"{split}-labels-idx1-ubyte.gz", np.arange(n) % 10)
    return folder


def reference_scene(ds) -> list[tuple[np.ndarray, list[tuple[np.ndarray, np.ndarray, tuple]]]]:
    """Paint every scene of ``ds`` from its layout, independently of the data set's own painter.

    Returns, per scene, the ``[canvas, canvas, 3]`` image and per object ``(mask, rgb patch, (top, left))``.
    """
    lay = ds.layout
    palette = [np.array(rgb, dtype=np.float64) for _, rgb in PALETTE]
    scenes = []
    for i in range(len(ds)):
        img = np.zeros((ds.canvas, ds.canvas, 3), dtype=np.uint8)
        objects = []
        for k in range(lay.offsets[i], lay.offsets[i + 1]):
            s, t, l = int(lay.size[k]), int(lay.top[k]), int(lay.left[k])
            patch = np.array(Image.fromarray(ds.items[lay.source[k]]).resize((s, s), Image.BILINEAR))
            mask = patch >= FG
            if lay.color[k] >= 0:
                rgb = np.rint(patch[..., None] * palette[lay.color[k]] / 255).astype(np.uint8)
            else:
                rgb = np.stack([patch] * 3, axis=-1)
            for y in range(s):
                for x in range(s):
                    if mask[y, x]:
                        img[t + y, l + x] = rgb[y, x]
            objects.append((mask, rgb, (t, l)))
        scenes.append((img, objects))
    return scenes


def visible_fractions(img: np.ndarray, objects) -> list[float]:
    """For each object, the share of its foreground pixels whose colour in ``img`` is the object's own."""
    out = []
    for mask, rgb, (t, l) in objects:
        s = mask.shape[0]
        same = (img[t:t + s, l:l + s] == rgb).all(axis=-1)
        out.append(float(same[mask].mean()))
    return out


def test_same_options_give_identical_scenes_and_other_seeds_differ(root):
    opts = dict(num_scenes=12, canvas=48, min_items=2, max_items=5, min_size=8, max_size=24, colors=3)
    a = create_dataset("fashion_scenes", root, "train", **opts)
    b = create_dataset("fashion_scenes", root, "train", **opts)
    fashion_scenes._layout.cache_clear()  # c is drawn afresh, not read from the per-process cache
    c = create_dataset("fashion_scenes", root, "train", **opts)
    for x, y in ((a, b), (a, c)):
        assert torch.equal(torch.stack([x[i][0] for i in range(len(x))]), torch.stack([y[i][0] for i in range(len(y))]))
        assert torch.equal(x.targets, y.targets)
    d = create_dataset("fashion_scenes", root, "train", **{**opts, "seed": 1})
    assert not np.array_equal(a.scene(0), d.scene(0)) or not np.array_equal(a.scene(1), d.scene(1))


def test_splits_use_their_own_items(root):
    train = create_dataset("fashion_scenes", root, "train", num_scenes=20, canvas=40, max_size=28)
    test = create_dataset("fashion_scenes", root, "test", num_scenes=20, canvas=40, max_size=28)
    train_px = np.stack([train.scene(i) for i in range(20)])
    test_px = np.stack([test.scene(i) for i in range(20)])
    # Resizing blends an item with black, never above its own value: train scenes hold train items only.
    assert train_px.max() == TRAIN_VALUE and test_px.max() == TEST_VALUE
    assert (test_px.max(axis=(1, 2, 3)) > TRAIN_VALUE).all()  # every test scene shows a test item


@pytest.mark.parametrize("colors", [0, 4])
def test_scenes_match_an_independent_painter_and_keep_objects_visible(root, colors):
    ds = create_dataset("fashion_scenes", root, "train", num_scenes=25, canvas=48, min_items=3, max_items=6,
                        min_size=8, max_size=32, min_visible=0.6, colors=colors)
    assert len(ds.classes) == (10 * colors if colors else 10)
    targets = ds.targets
    occluded = 0
    for i, (img, objects) in enumerate(reference_scene(ds)):
        np.testing.assert_array_equal(ds.scene(i), img)
        fractions = visible_fractions(img, objects)
        assert min(fractions) >= 0.6, (i, fractions)
        occluded += sum(f < 1 for f in fractions)
        # The target: exactly the (colour, class) pairs of the painted objects.
        lay = ds.layout
        ks = range(lay.offsets[i], lay.offsets[i + 1])
        expected = np.zeros(len(ds.classes), dtype=np.float32)
        for k in ks:
            label = ds.item_labels[lay.source[k]]
            expected[label + 10 * lay.color[k] if colors else label] = 1
        assert torch.equal(targets[i], torch.from_numpy(expected))
        assert torch.equal(ds[i][1], targets[i])
        assert 1 <= len(ks) <= 6
    assert occluded > 0  # the rule was exercised: some objects are partly hidden


@pytest.mark.skipif(not (REAL_DIR / "train-images-idx3-ubyte.gz").is_file(), reason="dataset-fashion-mnist not installed")
def test_real_clutter_keeps_min_visible_and_small_objects_are_common():
    ds = create_dataset("fashion_scenes", REAL_DIR, "test", num_scenes=60, seed=3)  # the suite's clutter defaults
    for img, objects in reference_scene(ds):
        assert min(visible_fractions(img, objects)) >= 0.6
    sizes = ds.layout.size
    assert sizes.min() >= 8 and sizes.max() <= 48
    assert np.mean(sizes < 20) > 0.4  # log-uniform on [8, 48]: about half the objects under 20 px
    assert np.diff(ds.layout.offsets).mean() > 3


@pytest.mark.parametrize("colors", [0, 3])
def test_largest_sizes_are_each_labels_largest_object(root, colors):
    ds = create_dataset("fashion_scenes", root, "test", num_scenes=30, min_items=3, max_items=6, min_size=6,
                        max_size=40, colors=colors)
    lay, got = ds.layout, ds.largest_sizes()
    assert got.shape == (len(ds), len(ds.classes)) and got.dtype == np.int64
    repeated = 0
    for i in range(len(ds)):
        want = np.zeros(len(ds.classes), dtype=np.int64)
        seen = set()
        for k in range(lay.offsets[i], lay.offsets[i + 1]):
            label = int(ds.item_labels[lay.source[k]]) + (10 * int(lay.color[k]) if colors else 0)
            repeated += label in seen
            seen.add(label)
            want[label] = max(want[label], int(lay.size[k]))
        np.testing.assert_array_equal(got[i], want)
        np.testing.assert_array_equal(got[i] > 0, ds.targets[i].numpy() > 0)
    assert repeated > 0  # scenes with two objects of one label occur, so "largest" is exercised


def test_kept_scenes_equal_fresh_paintings_and_cannot_be_changed_by_callers(root, monkeypatch):
    ds = create_dataset("fashion_scenes", root, "train", num_scenes=12, seed=5)
    first = ds.scene(3)
    first[:] = 7  # a caller's edit must not reach the kept image
    again = ds.scene(3)
    np.testing.assert_array_equal(again, ds._paint(3))
    assert not np.array_equal(again, first)
    other = create_dataset("fashion_scenes", root, "train", num_scenes=12, seed=6)  # other options, other images
    assert not np.array_equal(other.scene(3), again)
    # Over the size limit nothing is kept, and the scenes are the same.
    monkeypatch.setattr(fashion_scenes, "PAINT_CACHE_BYTES", 0)
    big = create_dataset("fashion_scenes", root, "train", num_scenes=12, seed=5)
    assert big._paint_key is None
    np.testing.assert_array_equal(big.scene(3), again)


def test_image_and_default_transform(root):
    ds = create_dataset("fashion_scenes", root, "test", num_scenes=3, canvas=32, max_size=20)
    img, target = ds[0]
    assert img.shape == (3, 32, 32) and img.dtype == torch.float32 and target.shape == (10,)
    np.testing.assert_allclose(img.permute(1, 2, 0).numpy() * 255, ds.scene(0), atol=1e-3)


@pytest.mark.parametrize("options, message", [
    ({"min_size": 30, "max_size": 20}, "max_size must be an integer between 30 and 96"),
    ({"max_items": 1}, "max_items must be an integer >= 2"),
    ({"colors": 9}, "colors must be an integer between 2 and 8"),
    ({"min_visible": 1.5}, "min_visible must be a number in [0, 1]"),
    ({"canvas": 40, "max_size": 48}, "max_size must be an integer between 8 and 40"),
])
def test_bad_options_name_the_option(root, options, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        create_dataset("fashion_scenes", root, "train", num_scenes=2, **options)


# ---- the suite's settings ----------------------------------------------------------------------------

def test_every_setting_resolves_to_valid_runs(root):
    names = accuracy.list_settings()
    assert {"quadrants", "sparse", "clutter", "many_labels", "lowres"} <= set(names)
    assert "demo" not in names  # the setting `mlkd demo` ran until it moved to `clutter` is `quadrants`
    seen = {}
    for name in names:
        setting = accuracy.load_setting(name)
        teacher, student = accuracy.run_configs(setting)
        assert isinstance(teacher, RunConfig) and isinstance(student, RunConfig)
        assert set(student.dataset_options) <= set(dataset_options(student.dataset))
        assert student.dataset == teacher.dataset and student.dataset_options == teacher.dataset_options
        assert student.data_root == teacher.data_root
        if student.data_root is not None:  # data kept outside the repository: its own tests below
            seen[name] = (student.dataset, student.data_root, student.model, student.img_size, student.weights,
                          student.epochs, setting.get("teacher_folds"), yaml.safe_dump(setting.get("fold_teacher")))
            continue
        # The data each setting is about can be built (on the synthetic items, few scenes).
        opts = {**student.dataset_options}
        opts[accuracy.QUICK_COUNT_OPTIONS[student.dataset]] = 4
        data = create_dataset(student.dataset, root, "train", **opts)
        seen[name] = (student.dataset, yaml.safe_dump(student.dataset_options), student.model, student.img_size,
                      len(data.classes), setting.get("teacher_folds"), yaml.safe_dump(setting.get("fold_teacher")))
    assert len(set(seen.values())) == len(seen), seen  # no two settings are the same experiment
    assert seen["many_labels"][4] >= 30
    assert accuracy.load_setting("clutter_crossfit")["teacher_of"] == "clutter"  # the fold teachers' folder
    assert accuracy.load_setting("sparse")["common"]["dataset_options"]["min_items"] == 1
    lowres_teacher, lowres = accuracy.run_configs(accuracy.load_setting("lowres"))
    quadrants_teacher, _ = accuracy.run_configs(accuracy.load_setting("quadrants"))
    assert lowres.weights and lowres.img_size < quadrants_teacher.img_size
    assert accuracy.load_setting("lowres")["teacher_of"] == "quadrants"


# ---- the real-photo settings (movie posters, read from ../shared; never needed by the tests) ---------------

POSTERS = ("posters_scratch", "posters_lowres")


def test_poster_settings_resolve_from_the_repository_root_whatever_the_current_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    expected_root = str((accuracy.ROOT / "../shared/data/movie_posters").resolve())  # no "..": one name for every copy
    scratch_teacher, scratch = accuracy.run_configs(accuracy.load_setting("posters_scratch"))
    lowres_setting = accuracy.load_setting("posters_lowres")
    _, lowres = accuracy.run_configs(lowres_setting)
    for cfg in (scratch_teacher, scratch, lowres):
        assert cfg.dataset == "csv" and cfg.data_root == expected_root
        # A validation carve of a fifth of train.csv (about 1,050 posters), the same images for every seed.
        assert cfg.val_split is None and cfg.val_fraction == 0.2
    assert scratch_teacher.model == "tf_efficientnet_lite0" and scratch_teacher.weights == "efficientnet-lite0"
    assert scratch.model == "tiny_cnn" and scratch.weights is None
    assert lowres.model == "tf_efficientnet_lite0" and lowres.weights == "efficientnet-lite0"
    assert scratch.img_size == lowres.img_size < scratch_teacher.img_size
    assert scratch.cache_teacher and lowres.cache_teacher and not scratch.augment
    # posters_lowres distils from the posters_scratch teacher, which is exactly that setting's own.
    assert lowres_setting["teacher_of"] == "posters_scratch"
    assert accuracy.load_setting("posters_scratch")["teacher_of"] == "posters_scratch"
    for name in POSTERS:
        assert "movie_posters" in accuracy.load_setting(name)["external_data"]


def _fake_repository(tmp_path, monkeypatch, posters: str):
    """Point the suite's repository root into ``tmp_path``; the posters folder is absent, empty or a tiny csv set."""
    (tmp_path / "repo").mkdir()  # a path through "repo/.." resolves only when "repo" exists, as the real root does
    monkeypatch.setattr(accuracy, "ROOT", tmp_path / "repo")
    folder = tmp_path / "shared" / "data" / "movie_posters"
    if posters != "absent":
        folder.mkdir(parents=True)
    if posters == "tiny":
        Image.new("RGB", (8, 12), (200, 30, 30)).save(folder / "a.jpg")
        for split in ("train", "test"):
            (folder / f"{split}.csv").write_text("image,labels\na.jpg,Drama|Comedy\n")
    return folder


@pytest.mark.parametrize("posters", ["absent", "empty"])
@pytest.mark.parametrize("name", POSTERS)
def test_a_missing_poster_folder_stops_the_setting_with_a_message(tmp_path, monkeypatch, capsys, name, posters):
    folder = _fake_repository(tmp_path, monkeypatch, posters)
    out = tmp_path / "out"
    assert accuracy.main([name, "--seeds", "0", "--methods", "vanilla", "--output", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err
    assert f"setting {name!r} needs the movie_posters data set" in err and "which is not present" in err
    assert f"expected in {folder.resolve()}" in err
    assert not out.exists()  # stopped before any run
    accuracy.main(["--list"])
    listed = capsys.readouterr().out
    assert f"{name:15s} csv (../shared/data/movie_posters, not present)" in listed


def test_present_poster_data_passes_the_check(tmp_path, monkeypatch):
    _fake_repository(tmp_path, monkeypatch, "tiny")
    for name in POSTERS:
        setting = accuracy.load_setting(name)
        assert accuracy.missing_data(name, setting, accuracy.run_configs(setting)) is None


# Every setting's resolved runs, as computed before `demo` was renamed `quadrants` and before the other
# settings inherited from it (the fields that decide what a run computes; RunConfig.to_dict() at that time).
QUADRANTS_COMMON = {"dataset": "fashion_mosaic", "dataset_options": {"num_mosaics": 4000}, "img_size": 56,
                    "augment": False, "batch_size": 64, "threads": 2}
QUADRANTS_TEACHER = {"model": "tf_efficientnet_lite0", "weights": "efficientnet-lite0", "img_size": 112,
                     "model_options": {"embed_dim": 128, "num_heads": 4, "ffn_dim": 256}, "epochs": 4, "lr": 1e-3}
QUADRANTS_STUDENT = {"model": "tiny_cnn", "model_options": {"embed_dim": 64, "num_heads": 4, "ffn_dim": 128},
                     "epochs": 8, "lr": 3e-3, "cache_teacher": True}


@pytest.mark.parametrize("name, teacher, student", [
    ("quadrants", {}, {}),
    ("sparse", {"dataset_options": {"num_mosaics": 4000, "min_items": 1}},
     {"dataset_options": {"num_mosaics": 4000, "min_items": 1}}),
    ("many_labels", {"dataset_options": {"num_mosaics": 4000, "colors": 4}, "epochs": 8},
     {"dataset_options": {"num_mosaics": 4000, "colors": 4}}),
    ("clutter", {"dataset": "fashion_scenes", "img_size": 96, "dataset_options": {
        "num_scenes": 4000, "canvas": 96, "min_items": 2, "max_items": 6, "min_size": 8, "max_size": 48,
        "min_visible": 0.6}},
     {"dataset": "fashion_scenes", "img_size": 64, "dataset_options": {
         "num_scenes": 4000, "canvas": 96, "min_items": 2, "max_items": 6, "min_size": 8, "max_size": 48,
         "min_visible": 0.6}}),
    ("lowres", {}, {"model": "tf_efficientnet_lite0", "weights": "efficientnet-lite0", "epochs": 1, "lr": None}),
])
def test_settings_compute_what_they_computed_before_the_rename(name, teacher, student):
    setting = accuracy.load_setting(name)
    own_teacher = setting["teacher_of"] == name
    teacher_cfg, _ = accuracy.run_configs(setting if own_teacher else accuracy.load_setting(setting["teacher_of"]))
    _, student_cfg = accuracy.run_configs(setting)
    want_teacher = {**QUADRANTS_COMMON, **QUADRANTS_TEACHER, **teacher}
    want_student = {**QUADRANTS_COMMON, **QUADRANTS_STUDENT, **student}
    if not own_teacher:
        want_teacher = {**QUADRANTS_COMMON, **QUADRANTS_TEACHER}
        assert setting["teacher_of"] == "quadrants"
    assert {k: teacher_cfg.to_dict()[k] for k in want_teacher} == want_teacher
    assert {k: student_cfg.to_dict()[k] for k in want_student} == want_student
    assert [m["method"] for m in setting["methods"]] == ["vanilla", "kd", "pkt", "mld", "l2d", "l2d_paper"]


def test_the_demo_runs_the_clutter_setting():
    from mlkd.config import make_config
    from mlkd.demo import demo_settings

    demo = demo_settings()
    common = {**demo["common"], "quiet": True}
    clutter_teacher, clutter_student = accuracy.run_configs(accuracy.load_setting("clutter"))
    assert make_config(common, **demo["teacher"]).to_dict() == clutter_teacher.to_dict()
    assert make_config(common, **demo["student"]).to_dict() == clutter_student.to_dict()
    clutter_methods = {(m["label"], m["method"]) for m in accuracy.load_setting("clutter")["methods"]}
    assert {(m["label"], m["method"]) for m in demo["methods"]} <= clutter_methods


def test_method_selection():
    setting = accuracy.load_setting("quadrants")
    labels = [m["label"] for m in setting["methods"]]
    assert [e[0] for e in accuracy.select_methods(setting, None)] == labels
    chosen = accuracy.select_methods(setting, ["vanilla", "l2d-paper", "rkd"])
    assert chosen[1] == ("L2D-paper", "l2d_paper", {})
    assert chosen[2] == ("rkd", "rkd", {})
    with pytest.raises(ValueError, match="names a method twice"):
        accuracy.select_methods(setting, ["kd", "KD"])
    with pytest.raises(ValueError, match="unknown setting 'cluter'; valid settings: clutter"):
        accuracy.load_setting("cluter")


def test_a_teacher_folder_of_other_settings_is_refused(tmp_path):
    teacher, _ = accuracy.run_configs(accuracy.load_setting("quadrants"))
    folder = tmp_path / "teacher"
    folder.mkdir()
    other = {**teacher.to_dict(), "lr": teacher.lr * 3, "output": str(folder)}
    (folder / "config.yaml").write_text(yaml.safe_dump(other))
    with pytest.raises(ValueError, match=r"holds a teacher trained with other settings \(lr\)"):
        accuracy.ensure_teacher(teacher, folder)


def test_a_finished_teacher_of_another_thread_count_is_reused(tmp_path):
    # The thread count changes only the last bits of a run: a finished teacher is not trained again for it.
    teacher, _ = accuracy.run_configs(accuracy.load_setting("quadrants"))
    folder = tmp_path / "teacher"
    folder.mkdir()
    saved = {**teacher.to_dict(), "threads": None, "output": str(folder)}
    (folder / "config.yaml").write_text(yaml.safe_dump(saved))
    (folder / "best.pt").write_bytes(b"")
    (folder / "metrics.json").write_text('{"mAP": 0.5}')
    assert teacher.threads == 2
    assert accuracy.ensure_teacher(teacher, folder) == {"mAP": 0.5}


def test_tinted_mosaics_keep_the_grey_layout_and_label_colour_class_pairs(root):
    grey = create_dataset("fashion_mosaic", root, "train", num_mosaics=10, min_items=2)
    tinted = create_dataset("fashion_mosaic", root, "train", num_mosaics=10, min_items=2, colors=3)
    np.testing.assert_array_equal(grey.sources, tinted.sources)
    assert tinted.classes[:2] == ["red T-shirt/top", "red Trouser"] and len(tinted.classes) == 30
    assert ((tinted.tints >= 0) == (tinted.sources >= 0)).all() and tinted.tints.max() <= 2
    for i in range(10):
        img, target = tinted[i]
        pixels = np.rint(img.permute(1, 2, 0).numpy() * 255).astype(np.uint8)
        expected = np.zeros(30, dtype=np.float32)
        for cell, (src, color) in enumerate(zip(tinted.sources[i], tinted.tints[i])):
            r, c = divmod(cell, 2)
            block = pixels[28 * r:28 * (r + 1), 28 * c:28 * (c + 1)]
            if src < 0:
                assert not block.any()
                continue
            expected[tinted.item_labels[src] + 10 * color] = 1
            want = np.array(PALETTE[color][1]) / 255 * tinted.items[src][..., None].astype(np.float64)
            np.testing.assert_allclose(block, want, atol=0.5 + 1e-9)
        assert torch.equal(target, torch.from_numpy(expected))
        assert torch.equal(tinted.targets[i], target)


def test_fold_teachers_are_shared_by_settings_that_ask_for_the_same_ones(tmp_path):
    plain = accuracy.fold_teacher_folders("posters_scratch", 2, {}, tmp_path)
    assert plain == [tmp_path / "posters_scratch" / f"teacher_fold{k}of2" for k in range(2)]
    longer = accuracy.fold_teacher_folders("posters_scratch", 2, {"epochs": 12}, tmp_path)
    assert [p.name for p in longer] == ["teacher_fold0of2_epochs12", "teacher_fold1of2_epochs12"]
    both = accuracy.fold_teacher_folders("clutter", 3, {"lr": 0.01, "epochs": 8, "mix": [0.1, 2]}, tmp_path)
    assert both[2].name == "teacher_fold2of3_epochs8_lr0.01_mix0.1-2"
    # Two settings whose teacher_of and fold_teacher agree get the same folders.
    shorts = {name: accuracy.load_setting(name) for name in ("posters_short_crossfit", "posters_scratch_crossfit")}
    assert len({tuple(accuracy.fold_teacher_folders(s["teacher_of"], s["teacher_folds"], s.get("fold_teacher") or {},
                                                    tmp_path)) for s in shorts.values()}) == 1


def test_results_say_how_closely_the_teachers_fit_their_training_images_when_recorded(monkeypatch):
    monkeypatch.setattr(accuracy, "markdown_table", lambda comparison: "(the test table)")
    fit = {"train_mAP": 53.79, "train_images": 4186, "scored": 4186}
    folds = {"f0": {"train_mAP": 50.1, "held_out_mAP": 21.23}, "f1": {"train_mAP": 49.9, "held_out_mAP": 20.5}}
    text = accuracy.results_markdown("s", "cmd", {"best_val_mAP": 0.2189, "fit": fit}, {}, {}, 1.0,
                                     {"f0": 0.2056, "f1": 0.2125}, folds)
    assert "Teacher on its 4,186 training images" in text and "53.79 mAP" in text
    assert "never seen): 21.23 / 20.50 mAP; on their own training images: 50.10 / 49.90." in text
    # Teachers trained before the record existed: no line, no error.
    old = accuracy.results_markdown("s", "cmd", {"best_val_mAP": 0.2189}, {}, {}, 1.0, {"f0": 0.2, "f1": 0.2},
                                    {"f0": None, "f1": None})
    assert "training images" not in old
