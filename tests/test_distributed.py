"""DDP on CPU (gloo): gradient equivalence, exact gathered evaluation, and a 2-process torchrun job."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.utils.data import Dataset

from mlkd.engine import distributed as ddp
from mlkd.engine.evaluate import ModelInput, eval_loader, predict
from mlkd.engine.trainer import TrainStep
from mlkd.losses import create_distiller
from mlkd.models import create_model
from synthetic import write_fashion_like

WORLD = 2
B = 6  # images per process
Q = 5
MODEL = dict(embed_dim=16, num_heads=2, ffn_dim=32)


def _batch():
    g = torch.Generator().manual_seed(1)
    # float64: the comparison is about which terms are summed, not about float32 summation order.
    images = torch.rand(WORLD * B, 3, 32, 32, generator=g, dtype=torch.float64)
    targets = (torch.rand(WORLD * B, Q, generator=g) < 0.5).double()
    targets[0] = 1.0  # an image with every label: ID groups of size q
    return images, targets


def _models():
    torch.manual_seed(0)
    # eval: no dropout, and BatchNorm uses running statistics, so each image's output does not
    # depend on how the batch is split over processes.
    student = create_model("tiny_cnn", Q, **MODEL).double().eval()
    teacher = create_model("tiny_cnn", Q, embed_dim=24, num_heads=2, ffn_dim=32).double().eval()
    teacher.requires_grad_(False)
    return student, teacher


def _gradients(step: torch.nn.Module, images, targets, teacher) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        t_out = teacher(images)
    total, _ = step(images, t_out, targets)
    total.backward()
    inner = getattr(step, "module", step)
    return {n: p.grad.detach().clone() for n, p in inner.student.named_parameters() if p.grad is not None}


def _grad_worker(rank: int, init_file: str, gather: bool, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        images, targets = _batch()
        student, teacher = _models()
        distiller = create_distiller("l2d", lambda_pkt=0)  # the gathered terms (the relation term is per process)
        if gather:
            distiller.embedding_gather = ddp.gather_structure_inputs
        step = torch.nn.parallel.DistributedDataParallel(TrainStep(student, distiller, WORLD))
        local = slice(rank * B, (rank + 1) * B)
        grads = _gradients(step, images[local], targets[local], teacher)
        if rank == 0:
            torch.save(grads, out)
    finally:
        dist.destroy_process_group()


def _eval_worker(rank: int, init_file: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        student = _models()[0].float()
        scores, targets = predict(student, eval_loader(_OddSet(), 2, 0, torch.device("cpu")),
                                  torch.device("cpu"), ModelInput())
        torch.save((scores, targets), f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


class _OddSet(Dataset):
    """7 images: not divisible by 2 processes, nor by the batch size 2."""

    classes = [f"c{i}" for i in range(Q)]

    def __len__(self):
        return 7

    def __getitem__(self, i):
        g = torch.Generator().manual_seed(100 + i)
        return torch.rand(3, 32, 32, generator=g), (torch.rand(Q, generator=g) < 0.5).float()


def _spawn(fn, *args) -> None:
    mp.start_processes(fn, args=args, nprocs=WORLD, join=True, start_method="spawn")


def test_gradients_under_ddp_equal_the_global_batch_objective(tmp_path):
    images, targets = _batch()
    student, teacher = _models()
    reference = _gradients(TrainStep(student, create_distiller("l2d", lambda_pkt=0), 1), images, targets, teacher)

    _spawn(_grad_worker, str(tmp_path / "init_a"), True, str(tmp_path / "gathered.pt"))
    gathered = torch.load(tmp_path / "gathered.pt")
    assert gathered.keys() == reference.keys()
    for name in reference:
        torch.testing.assert_close(gathered[name], reference[name], rtol=1e-5, atol=1e-8, msg=name)

    # Without gathering, CD and ID only see groups inside each process's half batch: not the same.
    _spawn(_grad_worker, str(tmp_path / "init_b"), False, str(tmp_path / "local.pt"))
    local = torch.load(tmp_path / "local.pt")
    worst = max(float((local[n] - reference[n]).abs().max() / reference[n].abs().max().clamp_min(1e-12))
                for n in reference)
    assert worst > 1e-3


def test_gathered_evaluation_equals_one_process(tmp_path):
    student = _models()[0].float()
    single = predict(student, eval_loader(_OddSet(), 2, 0, torch.device("cpu")), torch.device("cpu"), ModelInput())
    _spawn(_eval_worker, str(tmp_path / "init"), str(tmp_path / "pred"))
    for rank in range(WORLD):
        scores, targets = torch.load(tmp_path / f"pred.{rank}", weights_only=False)
        assert scores.shape == (7, Q)
        assert (targets == single[1]).all()
        assert abs(scores - single[0]).max() < 1e-6


def test_sharded_sampler_gives_every_index_once():
    from mlkd.engine.evaluate import ShardSampler

    seen = sorted(i for r in range(3) for i in ShardSampler(10, r, 3))
    assert seen == list(range(10))


def _run(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def cli_setup(tmp_path_factory):
    """Tiny CLI flags on a synthetic data set, and a teacher trained once for the torchrun tests."""
    tmp = tmp_path_factory.mktemp("torchrun")
    root = write_fashion_like(tmp / "data", n_train=200, n_test=60)
    common = ["--dataset", "fashion_mosaic", "--data-root", str(root), "--dataset-option", "num_mosaics=64",
              "--img-size", "32", "--batch-size", "8", "--epochs", "1", "--model", "tiny_cnn",
              "--model-option", "embed_dim=16", "--model-option", "num_heads=2", "--model-option", "ffn_dim=32",
              "--no-augment", "--device", "cpu", "--quiet"]
    r = _run(sys.executable, "-m", "mlkd", "train", *common, "--output", str(tmp / "teacher"))
    assert r.returncode == 0, r.stderr
    return common, tmp / "teacher" / "best.pt"


@pytest.mark.slow
def test_torchrun_two_processes_write_the_same_outputs(tmp_path, cli_setup):
    common, teacher = cli_setup
    single, multi = tmp_path / "single", tmp_path / "multi"
    distill = ["distill", "--teacher", str(teacher), "--method", "l2d", *common]
    r = _run(sys.executable, "-m", "mlkd", *distill, "--output", str(single))
    assert r.returncode == 0, r.stderr
    r = _run(sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "mlkd",
             *distill, "--gather-embeddings", "--output", str(multi))
    assert r.returncode == 0, r.stderr[-3000:]
    names = lambda d: sorted(p.name for p in Path(d).iterdir())  # noqa: E731
    assert names(multi) == names(single)
    metrics = json.loads((multi / "metrics.json").read_text())
    assert metrics["num_images"] == json.loads((single / "metrics.json").read_text())["num_images"]
    log = [json.loads(line) for line in (multi / "log.jsonl").read_text().splitlines()]
    assert len(log) == 1


@pytest.mark.slow
def test_torchrun_bench_runs_every_job_in_one_process_group(tmp_path, cli_setup):
    common, teacher = cli_setup
    out = tmp_path / "bench"
    r = _run(sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "mlkd",
             "bench", "--teacher", str(teacher), "--methods", "vanilla,l2d", "--seeds", "0,1", *common,
             "--output", str(out))
    assert r.returncode == 0, r.stderr[-3000:]
    result = json.loads((out / "comparison.json").read_text())
    assert {k: len(v["mAP"]["values"]) for k, v in result["methods"].items()} == {"vanilla": 2, "l2d": 2}
    assert r.stdout.count("| method | mAP |") == 1  # only rank 0 prints the table


# --- The teacher cache under DDP: each process fills a share, the shares are exchanged. ---

CACHE_IMAGES = 5 * 64 + 20  # 6 fill chunks, the last one short
CACHE_VIEWS = 2


class _ViewSet(Dataset):
    """Images drawn from torch's generator, which `AugmentedViews` seeds per (image, view)."""

    classes = [f"c{i}" for i in range(Q)]

    def __len__(self):
        return CACHE_IMAGES

    def __getitem__(self, i):
        return torch.rand(3, 40, 40), torch.zeros(Q)


def _cache_setup():
    """A teacher counting the images of each forward pass, its input, the views and an empty cache."""
    from mlkd.data.views import AugmentedViews
    from mlkd.engine.teacher_cache import TeacherCache

    torch.set_num_threads(1)  # the same kernels in every process and in the reference
    torch.manual_seed(0)
    teacher = create_model("tiny_cnn", Q, embed_dim=16, num_heads=2, ffn_dim=32).eval()
    batches: list[int] = []
    teacher.register_forward_hook(lambda m, inp, out: batches.append(inp[0].shape[0]))
    views = AugmentedViews(_ViewSet(), CACHE_VIEWS, seed=0)
    cache = TeacherCache(CACHE_IMAGES, CACHE_VIEWS, keep_embeddings=True, feature_levels=None)
    return teacher, ModelInput(size=48), views, cache, batches


def _fill_epochs(cache, teacher, norm, views, shard_of_epoch) -> list[int]:
    """Fill the views of epochs 0, 1 and 2 (view 1, view 0, view 1 again) as the trainer does."""
    from mlkd.engine.teacher_cache import fill_view

    seen = []
    for epoch, view in enumerate((1, 0, 1)):
        seen.append(fill_view(cache, teacher, norm, views, view, torch.device("cpu"), indices=shard_of_epoch(epoch)))
    return seen


def _stores(cache) -> list[torch.Tensor]:
    return [cache.logits, cache.embeddings, *cache.features]


def _cache_worker(rank: int, init_file: str, out: str) -> None:
    from torch.utils.data import DistributedSampler

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        teacher, norm, views, cache, batches = _cache_setup()
        sampler = DistributedSampler(range(CACHE_IMAGES), shuffle=True, seed=0)  # the trainer's sampler

        def shard(epoch):
            sampler.set_epoch(epoch)
            return list(sampler)

        seen = _fill_epochs(cache, teacher, norm, views, shard)
        torch.save({"seen": seen, "batches": batches, "filled": cache.filled, "stores": _stores(cache),
                    "shard_chunks": sorted({i // 64 for i in shard(0)})}, f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


def test_two_processes_fill_the_teacher_cache_once_and_hold_the_one_process_cache(tmp_path):
    threads = torch.get_num_threads()
    try:
        teacher, norm, views, single, batches = _cache_setup()
        assert _fill_epochs(single, teacher, norm, views, lambda epoch: None) == [CACHE_IMAGES, CACHE_IMAGES, 0]
    finally:
        torch.set_num_threads(threads)
    assert batches == ([64] * 5 + [20]) * 2  # both views, in fixed chunks of 64

    _spawn(_cache_worker, str(tmp_path / "init"), str(tmp_path / "cache"))
    ranks = [torch.load(tmp_path / f"cache.{rank}", weights_only=False) for rank in range(WORLD)]
    # The premise: each process's share of the images touches every chunk, so filling the chunks that
    # hold its own images alone would run the teacher on the whole view in every process.
    assert all(r["shard_chunks"] == list(range(6)) for r in ranks)
    # Whole chunks are dealt out in turn: rank 0 computes chunks 0, 2, 4, rank 1 chunks 1, 3, 5 (the
    # short one), of each view once; the cached view of epoch 2 costs nothing.
    assert ranks[0]["seen"] == [3 * 64, 3 * 64, 0] and ranks[0]["batches"] == [64] * 6
    assert ranks[1]["seen"] == [2 * 64 + 20, 2 * 64 + 20, 0] and ranks[1]["batches"] == [64, 64, 20] * 2
    for r in ranks:  # every process ends with the one-process cache, bit for bit
        assert bool(r["filled"].all())
        assert len(r["stores"]) == len(_stores(single)) == 2 + 4  # logits, embeddings, 4 feature maps
        for got, want in zip(r["stores"], _stores(single)):
            assert torch.equal(got, want)
