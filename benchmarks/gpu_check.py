"""CUDA checks and GPU timings, in one short run (under 10 minutes) on a machine with an NVIDIA GPU.

    python benchmarks/gpu_check.py --out "$OUT"     # writes $OUT/gpu_check.json (after every part)
    python benchmarks/gpu_check.py --dry-run --out /tmp/g   # CPU only: runs the parts' logic, small shapes

1. The final CD/ID (hand-written backward, ``nonzero_static``) on CUDA: values and gradients against
   CPU float64, in float32 and with half-precision inputs under bf16/fp16 autocast, at the MS-COCO-like
   shape and at 1,000 labels.
2. The L2D objective on CUDA under autocast (bf16, fp16): finite float32 values and gradients.
3. MLD+CD+ID and the official objective's loops, forward + backward with fresh tensors, CUDA events.
4. ``torch.compile`` of a student and of `L2DLoss`: one forward + backward + step, or the error.
5. Distillation-step throughput at 224 px, ResNet-101 teacher -> ResNet-34 student, batch 64, bf16
   autocast: teacher forward alone, a vanilla student step, an L2D student step with the teacher.
6. `mlkd train` and `mlkd distill --amp` (bf16 and fp16) end to end on CUDA with tiny models,
   `--resume`, and a one-process torchrun job on NCCL.

``--dry-run`` runs parts 1-4 on the CPU with small shapes (1: float64 against float64; 4 skipped: CPU
compilation takes minutes) so that the script's own logic is checked without a GPU; its numbers are not
GPU numbers.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from loss_speed import make_inputs  # noqa: E402
from reference_losses import cd_ref, id_ref, mld_ref  # noqa: E402
from synthetic import write_fashion_like  # noqa: E402

from mlkd.losses import L2DLoss, cd_loss, id_loss  # noqa: E402
from mlkd.models import create_model  # noqa: E402
from mlkd.outputs import ModelOutput  # noqa: E402


def cuda_ms(fn, repeats: int = 20, warmup: int = 5) -> float:
    """Median milliseconds of ``fn`` timed with CUDA events."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return sorted(times)[len(times) // 2]


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """Relative L2 difference of ``a`` from the float64 reference ``b`` (both moved to the CPU)."""
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


def check_cd_id(dev: torch.device, shapes: list[tuple[str, int, int, int, float]]) -> list[dict]:
    """CD and ID (values, gradients) on ``dev`` against the CPU in float64, plus half precision."""
    rows = []
    for label, n, q, d, k in shapes:
        _, _, es, et, y = make_inputs(n, q, d, k)
        ref_e = es.detach().double().requires_grad_(True)
        ref = {"cd": cd_loss(ref_e, et.double(), y), "id": id_loss(ref_e, et.double(), y)}
        (100 * ref["cd"] + 1000 * ref["id"]).backward()
        cases = [("float32", torch.float32, None), ("float64", torch.float64, None),
                 ("bf16 autocast", torch.bfloat16, torch.bfloat16), ("fp16 autocast", torch.float16, torch.float16)]
        for name, dtype, amp in cases:
            if dev.type == "cpu" and dtype == torch.float16:
                continue
            s = es.detach().to(dev, dtype).requires_grad_(True)
            t, yy = et.to(dev, dtype), y.to(dev)
            with torch.autocast(dev.type, dtype=amp or torch.bfloat16, enabled=amp is not None):
                cd, id_ = cd_loss(s, t, yy), id_loss(s, t, yy)
            (100 * cd + 1000 * id_).backward()
            rows.append({"shape": label, "inputs": name, "loss_dtype": str(cd.dtype),
                         "cd_rel": rel(cd, ref["cd"]), "id_rel": rel(id_, ref["id"]),
                         "grad_rel": rel(s.grad, ref_e.grad), "grad_finite": bool(torch.isfinite(s.grad).all()),
                         "grad_zero_on_negatives": bool((s.grad[~y.bool().to(dev)] == 0).all())})
    return rows


def check_compile(dev: torch.device) -> dict:
    """``torch.compile`` of a ResNet-34 student and of `L2DLoss`: one training step, or the error."""
    out = {}
    torch.manual_seed(0)
    student = create_model("resnet34", 80).to(dev).train()
    opt = torch.optim.Adam(student.parameters(), lr=1e-4)
    x = torch.rand(16, 3, 224, 224, device=dev)
    y = (torch.rand(16, 80, device=dev) < 3 / 80).float()
    t_out = ModelOutput(torch.randn(16, 80, device=dev), torch.randn(16, 80, 768, device=dev))
    eager = L2DLoss()(student(x), t_out, y).total.item()
    for name, model, loss in [("student", torch.compile(student), L2DLoss()),
                              ("student + L2DLoss", torch.compile(student), torch.compile(L2DLoss()))]:
        t0 = time.perf_counter()
        try:
            with torch.autocast(dev.type, dtype=torch.bfloat16):
                total = loss(model(x), t_out, y).total
            opt.zero_grad(set_to_none=True)
            total.backward()
            out[name] = {"ok": True, "seconds": round(time.perf_counter() - t0, 1), "total": total.item(),
                         "eager_float32_total": eager}
        except Exception as err:  # the point of this check is to report the failure clearly
            out[name] = {"ok": False, "seconds": round(time.perf_counter() - t0, 1),
                         "error": f"{type(err).__name__}: {str(err)[:800]}"}
    return out


def check_autocast(dev: torch.device) -> dict:
    zs, zt, es, et, y = (t.to(dev) for t in make_inputs(64, 80, 768, 3.0))
    zs, es = zs.detach().requires_grad_(True), es.detach().requires_grad_(True)
    loss = L2DLoss()
    ref = loss(ModelOutput(zs, es), ModelOutput(zt, et), y)
    ref.total.backward()
    ref_grad = es.grad.clone()
    out = {"float32_total": ref.total.item()}
    for dtype in (torch.bfloat16, torch.float16):
        es.grad = None
        with torch.autocast("cuda", dtype=dtype):
            # What a model under autocast hands over: half-precision logits and embeddings.
            r = loss(ModelOutput(zs.to(dtype), es.to(dtype)), ModelOutput(zt.to(dtype), et.to(dtype)), y)
        r.total.backward()
        name = str(dtype).split(".")[1]
        out[name] = {"total": r.total.item(), "dtype": str(r.total.dtype), "finite": bool(torch.isfinite(r.total)),
                     "rel_diff_total": float((r.total - ref.total).abs() / ref.total.abs()),
                     "grad_finite": bool(torch.isfinite(es.grad).all()),
                     "grad_rel_diff": float((es.grad - ref_grad).norm() / ref_grad.norm())}
    return out


def loss_speed(dev: torch.device, shapes: list[tuple[str, int, int, int, float]], timer) -> list[dict]:
    """MLD+CD+ID (vectorised) and the official objective's loops, fresh tensors each call."""
    rows = []
    for label, n, q, d, k in shapes:
        pool = [tuple(t.detach().to(dev) for t in make_inputs(n, q, d, k, seed)) for seed in range(3)]
        it = iter(range(10 ** 9))

        def fresh():
            zs, zt, es, et, y = pool[next(it) % len(pool)]
            return zs.detach().requires_grad_(True), zt, es.detach().requires_grad_(True), et, y

        def vec():
            zs, zt, es, et, y = fresh()
            L2DLoss()(ModelOutput(zs, es), ModelOutput(zt, et), y).total.backward()

        def loop():
            zs, zt, es, et, y = fresh()
            (torch.nn.functional.binary_cross_entropy_with_logits(zs, y, reduction="sum") + 10 * mld_ref(zs, zt)
             + 100 * cd_ref(es, et, y, fast=True) + 1000 * id_ref(es, et, y, fast=True)).backward()

        t_vec = timer(vec, 20, 5)
        t_loop = timer(loop, 3, 1)
        rows.append({"shape": label, "N": n, "q": q, "d": d, "l2dloss_ms": t_vec, "official_loop_ms": t_loop,
                     "speedup": t_loop / t_vec})
    return rows


def cpu_ms(fn, repeats: int = 20, warmup: int = 5) -> float:
    """Median milliseconds of ``fn`` on the CPU (the dry run)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return sorted(times)[len(times) // 2]


def step_throughput(dev: torch.device) -> dict:
    torch.manual_seed(0)
    teacher = create_model("resnet101", 80).to(dev).eval().requires_grad_(False)
    student = create_model("resnet34", 80).to(dev).train()
    opt = torch.optim.Adam(student.parameters(), lr=1e-4)
    x = torch.rand(64, 3, 224, 224, device=dev)
    y = (torch.rand(64, 80, device=dev) < 3 / 80).float()
    l2d, vanilla = L2DLoss(validate=False), L2DLoss(0, 0, 0, 0, validate=False)
    amp = dict(device_type="cuda", dtype=torch.bfloat16)

    def teacher_fwd():
        with torch.no_grad(), torch.autocast(**amp):
            teacher(x)

    def step(loss, with_teacher):
        def run():
            with torch.autocast(**amp):
                if with_teacher:
                    with torch.no_grad():
                        t = teacher(x)
                else:
                    t = ModelOutput(torch.zeros(64, 80, device=dev), torch.zeros(64, 80, 768, device=dev))
                out = loss(student(x), t, y)
            opt.zero_grad(set_to_none=True)
            out.total.backward()
            opt.step()
        return run

    res = {"teacher_forward_ms": cuda_ms(teacher_fwd, 10, 3),
           "vanilla_step_ms": cuda_ms(step(vanilla, False), 10, 3),
           "l2d_step_ms": cuda_ms(step(l2d, True), 10, 3)}
    res["images_per_second_l2d"] = 64e3 / res["l2d_step_ms"]
    res["teacher_share_of_l2d_step"] = res["teacher_forward_ms"] / res["l2d_step_ms"]
    return res


def end_to_end(out: Path) -> dict:
    data = write_fashion_like(out / "data")
    common = ["--dataset", "fashion_mosaic", "--data-root", str(data), "--dataset-option", "num_mosaics=256",
              "--img-size", "32", "--batch-size", "16", "--model", "tiny_cnn", "--model-option", "embed_dim=32",
              "--model-option", "num_heads=2", "--model-option", "ffn_dim=32", "--no-augment", "--device", "cuda",
              "--quiet", "--lr", "1e-2"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    results = {}

    def run(name, *args):
        t0 = time.perf_counter()
        r = subprocess.run([sys.executable, *args], env=env, capture_output=True, text=True, timeout=240)
        results[name] = {"returncode": r.returncode, "seconds": round(time.perf_counter() - t0, 1),
                         "tail": (r.stdout + r.stderr)[-600:]}
        if r.returncode == 0 and (out / name / "metrics.json").exists():
            results[name]["mAP"] = json.loads((out / name / "metrics.json").read_text())["mAP"]

    runs = out / "runs"
    run("teacher", "-m", "mlkd", "train", *common, "--epochs", "3", "--output", str(runs / "teacher"))
    teacher = str(runs / "teacher" / "best.pt")
    run("l2d_bf16", "-m", "mlkd", "distill", "--teacher", teacher, "--method", "l2d", "--amp", *common,
        "--epochs", "2", "--output", str(runs / "l2d_bf16"))
    run("l2d_fp16", "-m", "mlkd", "distill", "--teacher", teacher, "--method", "l2d", "--amp", "--amp-dtype",
        "float16", *common, "--epochs", "2", "--output", str(runs / "l2d_fp16"))
    # Resuming a finished run reloads model, optimizer, scheduler and fp16 scaler, then reports again.
    run("l2d_fp16_resume", "-m", "mlkd", "distill", "--teacher", teacher, "--method", "l2d", "--amp",
        "--amp-dtype", "float16", *common, "--epochs", "2", "--resume", "--output", str(runs / "l2d_fp16"))
    run("reviewkd_bf16", "-m", "mlkd", "distill", "--teacher", teacher, "--method", "reviewkd", "--amp", *common,
        "--epochs", "1", "--output", str(runs / "reviewkd_bf16"))
    run("torchrun_nccl", "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1", "-m", "mlkd",
        "distill", "--teacher", teacher, "--method", "l2d", "--amp", "--gather-embeddings", *common,
        "--epochs", "1", "--output", str(runs / "torchrun_nccl"))
    return results


COCO, LABELS_1000 = ("MS-COCO-like", 64, 80, 768, 3.0), ("1,000 labels", 32, 1000, 768, 5.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.environ.get("OUT", "gpu_check_out"))
    parser.add_argument("--dry-run", action="store_true", help="CPU only, small shapes, no compile/e2e parts")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.dry_run:
        dev = torch.device("cpu")
        small = [("small", 8, 12, 16, 3.0)]
        parts = [("cd_id", lambda: check_cd_id(dev, small)),
                 ("loss_speed", lambda: loss_speed(dev, small, cpu_ms))]
        report = {"device": "cpu (dry run: not GPU numbers)", "torch": torch.__version__}
    else:
        if not torch.cuda.is_available():
            raise SystemExit("no CUDA device: run with --dry-run to check the script on the CPU")
        dev = torch.device("cuda")
        parts = [("cd_id", lambda: check_cd_id(dev, [COCO, LABELS_1000])),
                 ("autocast", lambda: check_autocast(dev)),
                 ("loss_speed", lambda: loss_speed(dev, [COCO, LABELS_1000], cuda_ms)),
                 ("compile", lambda: check_compile(dev)),
                 ("step_throughput", lambda: step_throughput(dev)),
                 ("end_to_end", lambda: end_to_end(out))]
        report = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__}
    failed = False
    for name, fn in parts:
        t0 = time.perf_counter()
        try:
            report[name] = fn()
        except Exception as err:  # report every part even when one fails
            report[name] = {"error": f"{type(err).__name__}: {err}"}
            failed = True
        report.setdefault("seconds", {})[name] = round(time.perf_counter() - t0, 1)
        print(f"{name}: {time.perf_counter() - t0:.1f}s", json.dumps(report[name], indent=1)[:3000], flush=True)
        (out / "gpu_check.json").write_text(json.dumps(report, indent=2))
    if failed:
        raise SystemExit("some parts failed; see gpu_check.json")


if __name__ == "__main__":
    main()
