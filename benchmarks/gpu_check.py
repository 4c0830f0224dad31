"""CUDA checks and GPU timings, in one short run (under 10 minutes) on a machine with an NVIDIA GPU.

    python benchmarks/gpu_check.py --out "$OUT"     # writes $OUT/gpu_check.json (after every part)
    python benchmarks/gpu_check.py --dry-run --out /tmp/g   # CPU only: runs the parts' logic, small shapes

1. The final CD/ID (hand-written backward, ``nonzero_static``) on CUDA: values and gradients against
   CPU float64, in float32 and with half-precision inputs under bf16/fp16 autocast, at the MS-COCO-like
   shape and at 1,000 labels (part ``cd_id``).
2. The fused L2D node on CUDA, both forms: that it runs, values and gradients against the CPU float64
   node (float32, bf16/fp16 autocast), and its time against the general path (``fused``).
3. The L2D objective on CUDA under autocast (bf16, fp16): finite float32 values and gradients (``autocast``).
4. `L2DLoss` and the official objective's loops, forward + backward, fresh tensors, CUDA events
   (``loss_speed``).
5. One distillation step at 224 px, ResNet-101 teacher -> ResNet-34 student, batch 64, bf16 autocast:
   teacher forward alone, a vanilla student step, L2D steps (default and paper form) with the teacher,
   and the distillation terms alone: their share of the step (issue 11, item 2; ``step_throughput``).
6. The teacher's inference-only settings (inference_mode, channels_last, bf16 autocast, torch.compile):
   time and largest output difference against the plain forward pass (item 4; ``teacher_settings``).
7. ``torch.compile`` of a student and of `L2DLoss`: one forward + backward + step, or the error (``compile``).
8. `mlkd train` and `mlkd distill --amp` (bf16 and fp16) end to end on CUDA with tiny models,
   `--resume`, a float32 student under a compiled bf16 teacher (with and without `--cache-teacher`),
   and a one-process torchrun job on NCCL (``end_to_end``).

``--parts a,b`` runs only the named parts. ``--dry-run`` runs parts 1, 2, 4, 5 and 6 on the CPU with
small shapes and ResNet-18s (1: float64 against float64; 6 without compile: CPU compilation takes
minutes) so that the script's own logic is checked without a GPU; its numbers are not GPU numbers.
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

from mlkd.losses import L2DLoss, VanillaDistiller, cd_loss, create_distiller, id_loss  # noqa: E402
from mlkd.losses.objective import _Objective  # noqa: E402
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


def check_fused(dev: torch.device, shapes: list[tuple[str, int, int, int, float]], timer) -> list[dict]:
    """The fused L2D node on ``dev`` in both forms: that it runs, its values and gradients against the
    CPU float64 node (float32, and half-precision inputs under autocast), and its time against the
    general path on ``dev`` (terms one by one), fresh tensors each call."""
    rows = []
    for label, n, q, d, k in shapes:
        zs, zt, es, et, y = (t.detach() for t in make_inputs(n, q, d, k))
        for form in ("paper", "balanced"):
            loss = L2DLoss(form=form)
            rz, re = zs.double().detach().requires_grad_(True), es.double().detach().requires_grad_(True)
            ref = loss(ModelOutput(rz, re), ModelOutput(zt.double(), et.double()), y.double())
            ref.total.backward()
            for name, dtype in (("float32", torch.float32), ("bf16 autocast", torch.bfloat16),
                                ("fp16 autocast", torch.float16)):
                a = zs.to(dev, dtype).detach().requires_grad_(True)
                b = es.to(dev, dtype).detach().requires_grad_(True)
                with torch.autocast(dev.type, dtype=dtype if dtype != torch.float32 else torch.bfloat16,
                                    enabled=dtype != torch.float32):
                    out = loss(ModelOutput(a, b), ModelOutput(zt.to(dev, dtype), et.to(dev, dtype)), y.to(dev))
                out.total.backward()
                rows.append({"shape": label, "form": form, "inputs": name,
                             "node": type(out.total.grad_fn).__name__, "total_dtype": str(out.total.dtype),
                             "total_rel": rel(out.total, ref.total),
                             **{f"{t}_rel": rel(out.terms[t], ref.terms[t]) for t in ("bce", "mld", "cd", "id")},
                             "grad_logits_rel": rel(a.grad, rz.grad), "grad_embeddings_rel": rel(b.grad, re.grad)})
            pool = [tuple(t.detach().to(dev) for t in make_inputs(n, q, d, k, seed)) for seed in range(3)]
            it = iter(range(10 ** 9))

            def call(fn, dtype):
                def run():
                    zs_, zt_, es_, et_, y_ = pool[next(it) % len(pool)]
                    a = zs_.to(dtype).detach().requires_grad_(True)
                    b = es_.to(dtype).detach().requires_grad_(True)
                    with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dtype != torch.float32):
                        out = fn(ModelOutput(a, b), ModelOutput(zt_.to(dtype), et_.to(dtype)), y_)
                    out.total.backward()
                return run

            for name, dtype in (("float32", torch.float32), ("bf16 autocast", torch.bfloat16)):
                fused_ms = timer(call(loss, dtype), 30, 10)
                general_ms = timer(call(lambda *a: _Objective.forward(loss, *a), dtype), 30, 10)
                rows.append({"shape": label, "form": form, "inputs": name, "fused_ms": fused_ms,
                             "general_ms": general_ms, "speedup": general_ms / fused_ms})
    return rows


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


def step_throughput(dev: torch.device, arch: tuple[str, str] = ("resnet101", "resnet34"), batch: int = 64,
                    size: int = 224, timer=None) -> dict:
    """One distillation step as the engine runs it with ``--amp`` (bf16 autocast, teacher in channels_last
    under no_grad): the teacher's forward alone, a vanilla student step (BCE only, no teacher), an L2D step
    with the teacher, and the distillation terms alone (L2D objective minus BCE, forward + backward, on
    the student's bf16 outputs)."""
    timer = timer or cuda_ms
    torch.manual_seed(0)
    teacher = create_model(arch[0], 80).to(dev).eval().requires_grad_(False).to(memory_format=torch.channels_last)
    student = create_model(arch[1], 80).to(dev).train()
    opt = torch.optim.Adam(student.parameters(), lr=1e-4)
    x = torch.rand(batch, 3, size, size, device=dev)
    x_nhwc = x.contiguous(memory_format=torch.channels_last)
    y = (torch.rand(batch, 80, device=dev) < 3 / 80).float()
    # Value checks on, as training runs them; `--method l2d` is the balanced form.
    l2d, l2d_paper, bce_only = create_distiller("l2d"), L2DLoss(), VanillaDistiller()
    amp = dict(device_type=dev.type, dtype=torch.bfloat16)

    def teacher_fwd():
        with torch.no_grad(), torch.autocast(**amp):
            return teacher(x_nhwc)

    def step(loss, with_teacher):
        def run():
            with torch.autocast(**amp):
                t = teacher_fwd() if with_teacher else None
                out = loss(student(x), t, y)
            opt.zero_grad(set_to_none=True)
            out.total.backward()
            opt.step()
        return run

    with torch.autocast(**amp):
        s_out, t_out = student(x), teacher_fwd()
    zs, es = s_out.logits.detach(), s_out.label_embeddings.detach()

    def terms(loss):
        def run():
            a, b = zs.clone().requires_grad_(True), es.clone().requires_grad_(True)  # fresh tensors, as a step has
            with torch.autocast(**amp):
                out = loss(ModelOutput(a, b), t_out, y)
            out.total.backward()
        return run

    res = {"precision": "bf16 autocast", "teacher": arch[0], "student": arch[1], "batch": batch, "img_size": size,
           "teacher_forward_ms": timer(teacher_fwd, 20, 5),
           "vanilla_step_ms": timer(step(bce_only, False), 20, 5),
           "l2d_step_ms": timer(step(l2d, True), 20, 5),
           "l2d_paper_step_ms": timer(step(l2d_paper, True), 20, 5),
           "l2d_objective_ms": timer(terms(l2d), 50, 10),
           "l2d_paper_objective_ms": timer(terms(l2d_paper), 50, 10),
           "bce_only_objective_ms": timer(terms(bce_only), 50, 10)}
    res["distillation_terms_ms"] = res["l2d_objective_ms"] - res["bce_only_objective_ms"]
    res["terms_share_of_l2d_step"] = res["distillation_terms_ms"] / res["l2d_step_ms"]
    res["paper_terms_ms"] = res["l2d_paper_objective_ms"] - res["bce_only_objective_ms"]
    res["paper_terms_share_of_step"] = res["paper_terms_ms"] / res["l2d_paper_step_ms"]
    res["step_minus_teacher_minus_vanilla_ms"] = res["l2d_step_ms"] - res["teacher_forward_ms"] - res["vanilla_step_ms"]
    res["images_per_second_l2d"] = batch * 1e3 / res["l2d_step_ms"]
    res["teacher_share_of_l2d_step"] = res["teacher_forward_ms"] / res["l2d_step_ms"]
    return res


def teacher_settings(dev: torch.device, arch: str = "resnet101", batch: int = 64, size: int = 224, timer=None,
                     compile_: bool = True) -> dict:
    """What inference-only settings buy for a frozen teacher's forward pass (issue 11, item 4).

    Each setting's median time and its largest |output - plain| / max|plain| over logits and label-wise
    embeddings; *plain* is ``teacher(x)`` with frozen parameters in float32 (cuDNN's default TF32 convs)."""
    timer = timer or cuda_ms
    torch.manual_seed(0)
    model = create_model(arch, 80).to(dev).eval().requires_grad_(False)
    nhwc = create_model(arch, 80)
    nhwc.load_state_dict(model.state_dict())
    nhwc = nhwc.to(dev).eval().requires_grad_(False).to(memory_format=torch.channels_last)
    x = torch.rand(batch, 3, size, size, device=dev)
    x_nhwc = x.contiguous(memory_format=torch.channels_last)
    bf16 = dict(device_type=dev.type, dtype=torch.bfloat16)

    def inference(fn, mode=torch.inference_mode):
        def run():
            with mode():
                return fn()
        return run

    def autocast(fn):
        def run():
            with torch.autocast(**bf16):
                return fn()
        return run

    settings = {"plain": lambda: model(x),
                "no_grad": inference(lambda: model(x), torch.no_grad),
                "inference_mode": inference(lambda: model(x)),
                "channels_last": inference(lambda: nhwc(x_nhwc)),
                "bf16 autocast": inference(autocast(lambda: model(x))),
                "bf16 autocast + channels_last": inference(autocast(lambda: nhwc(x_nhwc)))}
    res: dict = {"teacher": arch, "batch": batch, "img_size": size}
    if compile_:
        compiled = torch.compile(nhwc)
        t0 = time.perf_counter()
        try:
            inference(autocast(lambda: compiled(x_nhwc)))()
            torch.cuda.synchronize()
            settings["compile (bf16 autocast + channels_last)"] = inference(autocast(lambda: compiled(x_nhwc)))
            res["compile_seconds"] = round(time.perf_counter() - t0, 1)
        except Exception as err:  # report, keep the other settings
            res["compile_error"] = f"{type(err).__name__}: {str(err)[:800]}"
    ref = settings["plain"]()
    rows = {}
    for name, fn in settings.items():
        out = fn()
        diff = max(float((a.float() - b).abs().max() / b.abs().max())
                   for a, b in ((out.logits, ref.logits), (out.label_embeddings, ref.label_embeddings)))
        rows[name] = {"ms": timer(fn, 20, 5), "max_rel_diff": diff}
    for row in rows.values():
        row["speedup_vs_plain"] = rows["plain"]["ms"] / row["ms"]
    res["settings"] = rows
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
        metrics = out / "runs" / name / "metrics.json"  # each run's --output is runs/<name>
        if r.returncode == 0 and metrics.exists():
            results[name]["mAP"] = json.loads(metrics.read_text())["mAP"]

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
    # A float32 student under a compiled bf16 teacher, with and without the teacher cache.
    run("l2d_teacher_bf16_compiled", "-m", "mlkd", "distill", "--teacher", teacher, "--method", "l2d",
        "--teacher-precision", "bfloat16", "--compile-teacher", *common, "--epochs", "2",
        "--output", str(runs / "l2d_teacher_bf16_compiled"))
    run("l2d_teacher_bf16_compiled_cached", "-m", "mlkd", "distill", "--teacher", teacher, "--method", "l2d",
        "--teacher-precision", "bfloat16", "--compile-teacher", "--cache-teacher", *common, "--epochs", "2",
        "--output", str(runs / "l2d_teacher_bf16_compiled_cached"))
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
    parser.add_argument("--parts", default="", help="comma-separated part names to run (default: all)")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.dry_run:
        dev = torch.device("cpu")
        small = [("small", 8, 12, 16, 3.0)]
        parts = [("cd_id", lambda: check_cd_id(dev, small)),
                 ("fused", lambda: check_fused(dev, small, cpu_ms)),
                 ("loss_speed", lambda: loss_speed(dev, small, cpu_ms)),
                 ("step_throughput", lambda: step_throughput(dev, ("resnet18", "resnet18"), 4, 64, cpu_ms)),
                 ("teacher_settings", lambda: teacher_settings(dev, "resnet18", 4, 64, cpu_ms, compile_=False))]
        report = {"device": "cpu (dry run: not GPU numbers)", "torch": torch.__version__}
    else:
        if not torch.cuda.is_available():
            raise SystemExit("no CUDA device: run with --dry-run to check the script on the CPU")
        dev = torch.device("cuda")
        parts = [("cd_id", lambda: check_cd_id(dev, [COCO, LABELS_1000])),
                 ("fused", lambda: check_fused(dev, [COCO, LABELS_1000], cuda_ms)),
                 ("autocast", lambda: check_autocast(dev)),
                 ("loss_speed", lambda: loss_speed(dev, [COCO, LABELS_1000], cuda_ms)),
                 ("step_throughput", lambda: step_throughput(dev)),
                 ("teacher_settings", lambda: teacher_settings(dev)),
                 ("compile", lambda: check_compile(dev)),
                 ("end_to_end", lambda: end_to_end(out))]
        report = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__}
    if args.parts:
        wanted = args.parts.split(",")
        unknown = sorted(set(wanted) - {name for name, _ in parts})
        if unknown:
            raise SystemExit(f"unknown part(s) {unknown}; choose from {[name for name, _ in parts]}")
        parts = [(name, fn) for name, fn in parts if name in wanted]
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
