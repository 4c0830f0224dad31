"""CUDA checks and GPU timings, in one short run on a machine with an NVIDIA GPU.

    python benchmarks/gpu_check.py --out DIR        # writes DIR/gpu_check.json and DIR/gpu_check.md

1. The L2D objective on CUDA in float32 and under autocast (bf16, fp16): finite float32 values and
   gradients, close to float32.
2. The vectorised MLD+CD+ID against the loop reference on the GPU (forward + backward), at the
   MS-COCO-like and 1,000-label shapes.
3. Distillation-step throughput at 224 px, ResNet-101 teacher -> ResNet-34 student, batch 64, bf16
   autocast: teacher forward alone, a vanilla student step, an L2D student step with the teacher.
4. `mlkd train` and `mlkd distill --amp` (bf16 and fp16) end to end on CUDA with tiny models,
   `--resume`, and a one-process torchrun job on NCCL.
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

from mlkd.losses import L2DLoss, led_loss, mld_loss  # noqa: E402
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


def loss_speed(dev: torch.device) -> list[dict]:
    rows = []
    for label, n, q, d, k in [("MS-COCO-like", 64, 80, 768, 3.0), ("1,000 labels", 32, 1000, 768, 5.0)]:
        zs, zt, es, et, y = (t.to(dev) for t in make_inputs(n, q, d, k))
        zs, es = zs.detach().requires_grad_(True), es.detach().requires_grad_(True)

        def vec():
            (10 * mld_loss(zs, zt, validate=False) + led_loss(es, et, y, validate=False)).backward()

        def loop():
            (10 * mld_ref(zs, zt) + 100 * cd_ref(es, et, y) + 1000 * id_ref(es, et, y)).backward()

        t_vec = cuda_ms(vec)
        t_loop = cuda_ms(loop, repeats=3, warmup=1)
        rows.append({"shape": label, "N": n, "q": q, "d": d, "vectorised_ms": t_vec, "loop_ms": t_loop,
                     "speedup": t_loop / t_vec})
    return rows


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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default="gpu_check_out")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    dev = torch.device("cuda")
    report = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__}
    for name, fn in [("autocast", lambda: check_autocast(dev)), ("loss_speed", lambda: loss_speed(dev)),
                     ("step_throughput", lambda: step_throughput(dev)), ("end_to_end", lambda: end_to_end(out))]:
        t0 = time.perf_counter()
        try:
            report[name] = fn()
        except Exception as err:  # report every part even when one fails
            report[name] = {"error": f"{type(err).__name__}: {err}"}
        print(f"{name}: {time.perf_counter() - t0:.1f}s", json.dumps(report[name], indent=1)[:3000], flush=True)
        (out / "gpu_check.json").write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
