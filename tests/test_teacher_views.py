"""Reproducible augmented views, consistent teaching and the teacher cache with augmentation."""
from __future__ import annotations

import pytest
import torch

import mlkd
from mlkd.config import make_config
from mlkd.data import build_transforms, create_dataset
from mlkd.data.views import VIEW_SEED, AugmentedViews, epoch_view, mix_seed
from mlkd.engine import trainer as trainer_module
from mlkd.engine.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
from mlkd.engine.evaluate import ModelInput
from mlkd.engine.teacher_cache import FILL_CHUNK, TeacherCache, check_cache_memory, fill_view, shared_cache
from mlkd.models import create_model
from mlkd.outputs import ModelOutput
from synthetic import write_fashion_like
from tiny_runs import interrupted_in_epoch, tiny_run

HEAD = {"embed_dim": 16, "num_heads": 2, "ffn_dim": 32}
TEACHER_SIZE = 64  # the teacher sees the student's 32 px views resized to its own resolution


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return write_fashion_like(tmp_path_factory.mktemp("fashion"), n_train=120, n_test=40)


@pytest.fixture(scope="module")
def teacher(data_root, tmp_path_factory):
    """A randomly initialised teacher checkpoint: what is tested here does not depend on its weights."""
    classes = create_dataset("fashion_mosaic", str(data_root), "test", num_mosaics=1).classes
    torch.manual_seed(1)
    model = create_model("tiny_cnn", len(classes), **HEAD)
    path = tmp_path_factory.mktemp("teacher") / "best.pt"
    return save_checkpoint({"model": model.state_dict(), "model_args": model.model_args, "classes": classes,
                            "config": {"img_size": TEACHER_SIZE}, "input_norm": None}, path)


def augmented_set(data_root, n=40):
    return create_dataset("fashion_mosaic", str(data_root), "train", transform=build_transforms(32, train=True),
                          num_mosaics=n)


def run_config(data_root, output, **overrides):
    values = {"epochs": 3, "augment": True, "method": "l2d", **overrides}
    return tiny_run(data_root, output, mosaics=150, head=HEAD, **values)


def test_a_view_depends_on_seed_index_and_view_only(data_root):
    views = AugmentedViews(augmented_set(data_root), views=4, seed=3)
    torch.manual_seed(0)
    first = views.view(5, 2)[0]
    before = torch.get_rng_state()
    views.view(7, 1)  # another image and view in between
    assert torch.equal(torch.get_rng_state(), before)  # the caller's random stream is untouched
    torch.manual_seed(123)
    assert torch.equal(views.view(5, 2)[0], first)
    assert not torch.equal(views.view(5, 3)[0], first)
    # The K views are shared by every run seed; only the fresh-view regime follows the run's seed.
    assert torch.equal(AugmentedViews(views.dataset, views=4, seed=9).view(5, 2)[0], first)
    fresh_a = AugmentedViews(views.dataset, views=None, seed=3).view(5, 2)[0]
    fresh_b = AugmentedViews(views.dataset, views=None, seed=4).view(5, 2)[0]
    assert not torch.equal(fresh_a, fresh_b)
    # Regenerating by hand from (VIEW_SEED, index, view) gives the same tensor.
    torch.manual_seed(mix_seed(VIEW_SEED, 5, 2))
    assert torch.equal(views.dataset[5][0], first)


def test_loader_views_do_not_depend_on_workers(data_root):
    views = AugmentedViews(augmented_set(data_root), views=None, seed=0)
    views.set_epoch(1)
    batches = {}
    for workers in (0, 2):
        loader = mlkd.data.build_loader(views, 8, train=True, workers=workers, seed=0)
        batches[workers] = next(iter(loader))
    images, _, index, view = batches[0]
    assert torch.equal(images, batches[2][0]) and torch.equal(index, batches[2][2])
    assert view.tolist() == [1] * 8  # fresh views: view id = epoch
    assert torch.equal(images[0], views.view(int(index[0]), 1)[0])


def test_each_block_of_k_epochs_visits_every_view_once():
    for seed in (0, 1):
        order = [epoch_view(seed, e, 4) for e in range(12)]
        for block in range(3):
            assert sorted(order[4 * block: 4 * block + 4]) == [0, 1, 2, 3]
    assert [epoch_view(0, e, 4) for e in range(8)] != [epoch_view(1, e, 4) for e in range(8)]
    assert [epoch_view(0, e, None) for e in range(3)] == [0, 1, 2]


def test_cached_outputs_equal_a_fresh_teacher_forward(data_root, teacher):
    model, _ = model_from_checkpoint(teacher)
    norm = ModelInput(size=TEACHER_SIZE)
    views = AugmentedViews(augmented_set(data_root, n=FILL_CHUNK + 6), views=3, seed=0)
    cache = TeacherCache(len(views), 3, keep_embeddings=True, feature_levels=None)
    seen = fill_view(cache, model, norm, views, 2, torch.device("cpu"), indices=[FILL_CHUNK + 1])
    assert seen == 6 and cache.filled[2].sum() == 6  # only the (short) chunk that holds the image asked for
    assert fill_view(cache, model, norm, views, 2, torch.device("cpu")) == FILL_CHUNK
    assert fill_view(cache, model, norm, views, 2, torch.device("cpu")) == 0  # all there: the teacher stays idle
    index = torch.tensor([FILL_CHUNK + 3, 0, 17])
    got = cache.get(index, torch.tensor([2, 2, 2]), torch.device("cpu"))
    with torch.no_grad():
        want = model(norm(torch.stack([views.view(int(i), 2)[0] for i in index])))
    # A batch of 3 instead of the fill chunk of 64 may change the last float bits, hence the tolerance.
    torch.testing.assert_close(got.logits, want.logits, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got.label_embeddings, want.label_embeddings, rtol=1e-5, atol=1e-6)
    assert len(got.features) == len(want.features)
    for g, w in zip(got.features, want.features):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-6)
    with pytest.raises(RuntimeError, match="before being filled"):
        cache.get(torch.tensor([0]), torch.tensor([1]), torch.device("cpu"))


def test_shared_cache_keeps_what_is_asked_and_widens():
    out = ModelOutput(torch.randn(2, 3), torch.randn(2, 3, 4), [torch.randn(2, 5, 4, 4), torch.randn(2, 6, 2, 2)])
    cache = shared_cache(("a",), 4, 2, keep_embeddings=False, feature_levels=1, sample=out, limit_gib=1)
    cache.put(1, torch.tensor([0, 1]), out)
    got = cache.get(torch.tensor([1]), torch.tensor([1]), torch.device("cpu"))
    assert got.label_embeddings is None and len(got.features) == 1
    assert torch.equal(got.features[0], out.features[1][1:]) and torch.equal(got.logits, out.logits[1:])
    narrower = shared_cache(("a",), 4, 2, keep_embeddings=False, feature_levels=0, sample=out, limit_gib=1)
    assert narrower is cache
    wider = shared_cache(("a",), 4, 2, keep_embeddings=True, feature_levels=None, sample=out, limit_gib=1)
    assert wider is not cache and wider.keep_embeddings and wider.feature_levels is None
    assert not wider.filled.any()  # a new cache is filled again by the teacher
    assert shared_cache(("b",), 4, 2, keep_embeddings=False, feature_levels=0, sample=out, limit_gib=1) is not wider


def test_a_cache_over_the_limit_is_refused_with_the_ways_out():
    counts = {"logits": 80, "embeddings": 80 * 768}
    # 8 views x 82,081 images x 61,520 values x 4 bytes = 150.49 GiB
    with pytest.raises(ValueError, match=r"8 views x 82081 images x \(80 logits \+ 61440 embeddings\).*150\.49"
                                         r".*fewer views will not help.*label-wise embeddings.*--cache-limit-gib"):
        check_cache_memory(82_081, 8, counts, 2.0)
    with pytest.raises(ValueError, match=r"--teacher-views 2 fits"):
        check_cache_memory(1000, 8, counts, 0.5)
    assert check_cache_memory(1000, 2, counts, 0.5) == 2 * 1000 * (80 + 80 * 768) * 4


def test_run_refuses_an_oversized_cache(data_root, teacher, tmp_path):
    with pytest.raises(ValueError, match=r"teacher cache would need 8 views x 135 images.*cache-limit-gib"):
        mlkd.distill(**run_config(data_root, tmp_path / "big", teacher=str(teacher), cache_teacher=True,
                                  cache_limit_gib=1e-6))


def test_cli_caches_the_teacher_with_augmentation(data_root, teacher, tmp_path):
    from mlkd.cli import main

    args = ["distill", "--teacher", str(teacher), "--cache-teacher", "--teacher-views", "3", "--dataset",
            "fashion_mosaic", "--data-root", str(data_root), "--dataset-option", "num_mosaics=80", "--img-size",
            "32", "--batch-size", "16", "--epochs", "1", "--model", "tiny_cnn", "--device", "cpu", "--quiet",
            *[f"--model-option={k}={v}" for k, v in HEAD.items()], "--output", str(tmp_path / "cli")]
    assert main(args) == 0
    assert load_checkpoint(tmp_path / "cli" / "last.pt")["config"]["teacher_views"] == 3


def _record_teacher(monkeypatch, calls):
    """Count the images the teacher runs on, and keep what each step gave the distiller."""
    real_prepare, real_outputs = trainer_module.prepare_teacher, trainer_module.teacher_outputs

    def prepare(*args, **kwargs):
        setup = real_prepare(*args, **kwargs)
        setup.module.register_forward_hook(lambda m, inp, out: calls["teacher_images"].append(inp[0].shape[0]))
        calls["model"], calls["norm"] = setup.module, setup.input
        return setup

    def outputs(teacher, norm, images, index, view, cache, device):
        out = real_outputs(teacher, norm, images, index, view, cache, device)
        calls["steps"].append((images.clone(), index.clone(), view.clone(), out))
        return out

    monkeypatch.setattr(trainer_module, "prepare_teacher", prepare)
    monkeypatch.setattr(trainer_module, "teacher_outputs", outputs)


def _one_image_at_a_time(run_teacher):
    """`run_teacher`, run on each image of the batch alone: an image's outputs cannot depend on its batch.

    Logits come back column-major, the layout the batched read-out (an einsum) gives them, so that the
    uncached path gets the layout it gets in a real run (and makes it contiguous as there).
    """
    def run(teacher, images, index=None):
        outs = [run_teacher(teacher, images[i:i + 1], None if index is None else index[i:i + 1])
                for i in range(images.shape[0])]
        embeddings = None if outs[0].label_embeddings is None else torch.cat([o.label_embeddings for o in outs])
        return ModelOutput(torch.cat([o.logits for o in outs]).t().contiguous().t(), embeddings,
                           [torch.cat(level) for level in zip(*(o.features for o in outs))])
    return run


def test_k_view_cache_trains_bit_identically_and_teaches_consistently(data_root, teacher, tmp_path, monkeypatch):
    # Bit-identity needs a teacher whose output for an image does not depend on its batch: a premise of
    # the teacher, not of the cache, and machine-dependent. With MKL on an AVX-512 CPU (torch 2.14) the
    # logit read-out einsum (a batched GEMM) rounds a batch of 16 (the uncached run's student batches)
    # otherwise than a fill chunk of 64, by 1 ulp (the former premise check, embeddings only, missed it),
    # so the runs split from step 1 (same images, views, embeddings). Hence the teacher runs one image at
    # a time in both runs: what is compared is the cache itself (views, indices, fill, random stream).
    from mlkd.engine import teacher_cache as teacher_cache_module

    one_at_a_time = _one_image_at_a_time(trainer_module.run_teacher)
    model, _ = model_from_checkpoint(teacher)
    x = torch.rand(64, 3, TEACHER_SIZE, TEACHER_SIZE)
    with torch.no_grad():
        part, whole = one_at_a_time(model, x[10:26]), one_at_a_time(model, x)
    assert torch.equal(part.logits, whole.logits[10:26])
    assert torch.equal(part.label_embeddings, whole.label_embeddings[10:26])

    common = dict(teacher=str(teacher), teacher_views=2, epochs=3)
    runs = {}
    for label, cache in (("plain", False), ("cached", True)):
        calls = {"teacher_images": [], "steps": []}
        _record_teacher(monkeypatch, calls)
        monkeypatch.setattr(trainer_module, "run_teacher", one_at_a_time)
        monkeypatch.setattr(teacher_cache_module, "run_teacher", one_at_a_time)
        result = mlkd.distill(**run_config(data_root, tmp_path / label, cache_teacher=cache, **common))
        monkeypatch.undo()
        runs[label] = (result, calls)

    (plain, p_calls), (cached, c_calls) = runs["plain"], runs["cached"]
    a = load_checkpoint(tmp_path / "plain" / "last.pt")["model"]
    b = load_checkpoint(tmp_path / "cached" / "last.pt")["model"]
    for key in a:
        assert torch.equal(a[key], b[key]), key
    for p_rec, c_rec in zip(plain.history, cached.history):
        assert {k: v for k, v in p_rec.items() if k.startswith("train_")} == \
               {k: v for k, v in c_rec.items() if k.startswith("train_")}
    assert plain.metrics["mAP"] == cached.metrics["mAP"]

    # 135 training images (150 less the validation tenth), 8 steps of 16 per epoch. Both start with one
    # sample batch of 2 (the distiller's shapes). Without the cache the teacher runs on every step; with
    # it, once per (image, view): 3 epochs over 2 views visit both views, so 2 x 135 images.
    n_train, views_used = 135, {epoch_view(0, e, 2) for e in range(3)}
    assert views_used == {0, 1}
    assert sum(p_calls["teacher_images"]) == 2 + 3 * 8 * 16
    assert sum(c_calls["teacher_images"]) == 2 + len(views_used) * n_train

    # Consistent teaching: each step's images are exactly the views named by (index, view), and the
    # teacher's outputs (cached or not) are the teacher's on those very images.
    # The run's recorded settings: its training images are read at the teacher's side (read_size).
    train_set = mlkd.data.build_datasets(make_config(str(tmp_path / "plain" / "config.yaml")))[0]
    views = AugmentedViews(train_set, views=2, seed=0)
    for calls in (p_calls, c_calls):
        model, norm = calls["model"], calls["norm"]
        for images, index, view, out in calls["steps"][::5]:
            assert len(set(view.tolist())) == 1  # one view id per epoch
            for j in (0, 9):
                assert torch.equal(images[j], views.view(int(index[j]), int(view[j]))[0])
            with torch.no_grad():
                fresh = one_at_a_time(model, norm(images))
            assert torch.equal(out.label_embeddings, fresh.label_embeddings)
            assert torch.equal(out.logits, fresh.logits)


def test_resume_with_augmentation_cache_and_workers_is_exact(data_root, teacher, tmp_path, monkeypatch):
    from mlkd.engine import teacher_cache

    common = dict(teacher=str(teacher), cache_teacher=True, teacher_views=2, epochs=3)
    teacher_cache._POOL.clear()
    straight = mlkd.distill(**run_config(data_root, tmp_path / "straight", **common))

    teacher_cache._POOL.clear()
    with interrupted_in_epoch(monkeypatch, 3):
        mlkd.distill(**run_config(data_root, tmp_path / "killed", **common))
    # As in a new process: an empty cache, refilled by the resumed run, now with a worker process
    # preparing the augmented views.
    teacher_cache._POOL.clear()
    resumed = mlkd.distill(**run_config(data_root, tmp_path / "killed", resume=True, workers=1, **common))
    a = load_checkpoint(tmp_path / "straight" / "last.pt")["model"]
    b = load_checkpoint(tmp_path / "killed" / "last.pt")["model"]
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert resumed.metrics["mAP"] == straight.metrics["mAP"]


def test_cli_runs_a_bfloat16_teacher_and_caches_it_apart(data_root, teacher, tmp_path, monkeypatch):
    from mlkd.cli import main

    calls = {"teacher_images": [], "steps": []}
    _record_teacher(monkeypatch, calls)
    args = ["distill", "--teacher", str(teacher), "--teacher-precision", "bfloat16", "--dataset", "fashion_mosaic",
            "--data-root", str(data_root), "--dataset-option", "num_mosaics=40", "--img-size", "32",
            "--batch-size", "16", "--epochs", "1", "--model", "tiny_cnn", "--device", "cpu", "--quiet", "--method",
            "l2d", *[f"--model-option={k}={v}" for k, v in HEAD.items()], "--output", str(tmp_path / "bf16")]
    assert main(args) == 0
    assert calls["model"].inference_settings["precision"] == "bfloat16"
    assert load_checkpoint(tmp_path / "bf16" / "last.pt")["config"]["teacher_precision"] == "bfloat16"
    # What the distiller got: float32 outputs of a bf16 forward pass (not bit-equal to float32 ones).
    images, _, _, out = calls["steps"][0]
    assert out.logits.dtype == torch.float32 and out.label_embeddings.dtype == torch.float32
    with torch.no_grad():
        plain = calls["model"](calls["norm"](images))
    assert not torch.equal(out.logits, plain.logits)
    torch.testing.assert_close(out.logits, plain.logits, rtol=2e-2, atol=2e-2 * float(plain.logits.abs().max()))
    # The teacher cache keeps outputs of different precisions apart.
    cfg = make_config(None, **run_config(data_root, tmp_path / "k", teacher=str(teacher)))
    keys = {trainer_module._cache_key(make_config(cfg, teacher_precision=p), 1) for p in ("float32", "bfloat16")}
    assert len(keys) == 2


def test_unknown_teacher_precision_in_a_config_is_refused(data_root, teacher, tmp_path):
    with pytest.raises(ValueError, match="teacher_precision must be one of 'float32', 'bfloat16', got 'half'"):
        mlkd.distill(**run_config(data_root, tmp_path / "bad", teacher=str(teacher), teacher_precision="half"))
