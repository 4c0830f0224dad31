"""The `mlkd` command: parses flags and config files, calls the Python API, chooses exit codes."""
from __future__ import annotations

import argparse
import os
import logging
import sys
import textwrap
from pathlib import Path
from typing import Any, Sequence

from mlkd.config import DISTILL_METHOD, TEACHER_MISSING_LABELS, TEACHER_PRECISIONS, RunConfig, load_yaml, make_config, \
    parse_yaml
from mlkd.data.custom_csv import FORMAT_SUMMARY

log = logging.getLogger("mlkd")

METHOD_HELP = "vanilla (no distillation), l2d, mld, led, cd, id, kd, ps, mse, rkd, pkt, reviewkd"



def _demo_seeds(quick: bool = False) -> str:
    """The demo's default student seeds as configs/demo.yaml sets them, for the help text."""
    from mlkd.demo import demo_settings

    return ",".join(str(s) for s in demo_settings(quick)["seeds"])

def _lambda(text: str) -> tuple[str, float]:
    name, sep, value = text.partition("=")
    try:
        if not sep or not name:
            raise ValueError
        return name.strip(), float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--lambda takes NAME=VALUE, e.g. --lambda cd=50; got {text!r}") from None


def _floats(text: str) -> list[float]:
    """``"0.485,0.456,0.406"`` -> ``[0.485, 0.456, 0.406]`` (--teacher-mean, --teacher-std)."""
    try:
        values = [float(v) for v in text.replace(" ", "").split(",") if v]
    except ValueError:
        values = []
    if not values:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, e.g. 0.485,0.456,0.406; got {text!r}")
    return values


def _fold(text: str) -> list[int]:
    """``"0/2"`` -> ``[0, 2]`` (--hold-out-fold: fold 0 of 2)."""
    try:
        k, n = (int(part) for part in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected K/N, fold K of N folds (e.g. 0/2), got {text!r}") from None
    if not (n >= 2 and 0 <= k < n):
        raise argparse.ArgumentTypeError(f"fold K of N needs N >= 2 and 0 <= K < N (e.g. 0/2), got {text!r}")
    return [k, n]


def _option(text: str) -> tuple[str, Any]:
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return name.strip(), parse_yaml(value, f"the value of {text!r}")
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


class _HelpFormatter(argparse.HelpFormatter):
    """Appends ``(default: X)`` to an option's help when it has a real default and the text names none."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (default is None or default is False or default == argparse.SUPPRESS or not action.option_strings
                or "default" in text or "%(default)" in text):
            return text
        return f"{text} (default: %(default)s)" if text else "(default: %(default)s)"


def _default(name: str, none: str = "none") -> str:
    """``(default: X)`` for a `RunConfig` field, from the dataclass itself (so help never drifts)."""
    value = getattr(RunConfig(), name)
    if value is None:
        text = none
    elif isinstance(value, bool):
        text = "on" if value else "off"
    elif isinstance(value, float):
        text = f"{value:g}"
    else:
        text = str(value)
    return f"(default: {text})"


def _default_lr() -> str:
    if RunConfig().lr is not None:
        return _default("lr")
    from mlkd.config import LR_FROM_SCRATCH, LR_PRETRAINED, SHORT_SCHEDULE_STEPS

    return (f"(default: by initialisation and schedule: {LR_FROM_SCRATCH:g} from scratch; {LR_PRETRAINED:g} with "
            f"pretrained weights, {LR_FROM_SCRATCH:g} for fewer than {SHORT_SCHEDULE_STEPS} optimizer steps)")


def _add_run_options(p: argparse.ArgumentParser) -> None:
    """Flags shared by train and distill; each maps to a `RunConfig` field (unset = file/default)."""
    g = p.add_argument_group("run")
    g.add_argument("--config", action="append", metavar="FILE.yaml",
                   help="YAML file of RunConfig fields (repeatable: later files win); flags override them")
    g.add_argument("--dataset", help=f"data set name (see `mlkd list`) {_default('dataset')}")
    g.add_argument("--data-root", dest="data_root", help="folder of the data set in its official layout")
    g.add_argument("--dataset-option", dest="dataset_options", action="append", type=_option, metavar="KEY=VALUE",
                   help="reader option, e.g. num_mosaics=2000 (repeatable)")
    g.add_argument("--val-split", dest="val_split", metavar="NAME",
                   help="the split that selects the best epoch (default: the data set's own when it has one, "
                        f"e.g. csv's val.csv; else {100 * RunConfig().val_fraction:g}%% of the training split, seeded)")
    g.add_argument("--hold-out-fold", dest="hold_out_fold", type=_fold, metavar="K/N",
                   help="train without fold K of N of the training set: a cross-fitted teacher, whose students "
                        "distil with --fold-teachers (validation and test stay whole)")
    g.add_argument("--model", help=f"timm model name or built-in (tiny_cnn, small_cnn) {_default('model')}")
    g.add_argument("--model-option", dest="model_options", action="append", type=_option, metavar="KEY=VALUE",
                   help="create_model option, e.g. embed_dim=256 (repeatable)")
    g.add_argument("--weights", help="local checkpoint (.pt/.pth/.safetensors) or efficientnet-lite0|1|2 "
                                    "(default: none: from scratch, unless --pretrained)")
    g.add_argument("--pretrained", action="store_true", default=None, help="timm's pretrained weights (needs internet)")
    g.add_argument("--img-size", dest="img_size", type=int, metavar="PX",
                   help=f"input resolution, square {_default('img_size')}")
    g.add_argument("--read-size", dest="read_size", type=int, metavar="PX",
                   help="side at which training images are read and augmented before each model resizes its copy "
                        "(default: the larger of --img-size and the teacher's input, but not above the training images' own "
                        "side, which would only upsample them)")
    g.add_argument("--batch-size", dest="batch_size", type=int,
                   help="images per step and per process (under torchrun the global batch is N times larger) "
                        + _default("batch_size"))
    g.add_argument("--epochs", type=int, help=f"training epochs {_default('epochs')}")
    g.add_argument("--schedule-epochs", dest="schedule_epochs", type=int,
                   help="OneCycle length if longer than --epochs "
                        + _default("schedule_epochs", "the same as --epochs"))
    g.add_argument("--lr", type=float, help=f"peak learning rate of Adam's OneCycle schedule {_default_lr()}")
    g.add_argument("--weight-decay", dest="weight_decay", type=float,
                   help=f"on weights, not biases or norms {_default('weight_decay')}")
    g.add_argument("--seed", type=int, help=f"initialisation, shuffling and augmentation {_default('seed')}")
    g.add_argument("--device", help=f"auto (CUDA when available), cpu, cuda or cuda:N {_default('device')}")
    g.add_argument("--amp", action="store_true", default=None, help="mixed precision on CUDA (bf16; see --amp-dtype)")
    g.add_argument("--amp-dtype", dest="amp_dtype", choices=["bfloat16", "float16"],
                   help=f"autocast type of --amp {_default('amp_dtype')}")
    g.add_argument("--workers", type=int, help=f"data loader worker processes {_default('workers')}")
    g.add_argument("--threads", type=int,
                   help="torch CPU threads (default: automatic: torch's default, fewer when other processes keep "
                        "cores busy, see docs/benchmarks.md; a fixed N makes reruns match exactly)")
    g.add_argument("--no-augment", dest="augment", action="store_false", default=None,
                   help="no random augmentation of training images")
    g.add_argument("--sync-bn", dest="sync_bn", action="store_true", default=None, help="SyncBatchNorm under torchrun")
    g.add_argument("--output", help="output folder (default runs/<command>)")
    g.add_argument("--resume", action="store_true", default=None,
                   help="continue the run in --output from last.pt, bit for bit as if never stopped; without "
                        "--config it reads --output's own config.yaml, so `--output DIR --resume` is enough")
    g.add_argument("--quiet", action="store_true", default=None, help="no progress bars or per-epoch lines")
    p.epilog = f"Your own data: {FORMAT_SUMMARY}"


def _add_distill_options(p: argparse.ArgumentParser, teacher_required: bool = True) -> None:
    g = p.add_argument_group("distillation")
    g.add_argument("--teacher", required=teacher_required,
                   help="teacher checkpoint (best.pt of mlkd train); for a teacher trained elsewhere use "
                        "--teacher-model and --teacher-weights instead")
    g.add_argument("--fold-teachers", dest="fold_teachers", nargs="+", metavar="CKPT",
                   help="cross-fitted teachers instead of --teacher: the best.pt of `mlkd train --hold-out-fold K/N` "
                        "for each K = 0..N-1; each teaches the training images it never saw (docs/method.md)")
    t = p.add_argument_group("a teacher trained elsewhere (docs/method.md, 'Bring your own teacher')")
    t.add_argument("--teacher-model", dest="teacher_model", metavar="NAME",
                   help="timm architecture of the teacher (e.g. resnet50); exclusive with --teacher")
    t.add_argument("--teacher-weights", dest="teacher_weights", metavar="FILE",
                   help="its trained state dict (.pth/.pt/.bin/.tar/.ckpt/.safetensors, read weights-only), with "
                        "one classifier output per class")
    t.add_argument("--teacher-classes", dest="teacher_classes", metavar="FILE",
                   help="the teacher's classes, one name per line in its output order; mapped to the data set's "
                        "by name (default: the data set's classes, in order)")
    t.add_argument("--teacher-missing-labels", dest="teacher_missing_labels", choices=TEACHER_MISSING_LABELS,
                   help="data-set labels the teacher has no output for: error (default), or exclude them from the "
                        "distillation terms (the student still learns them from BCE)")
    t.add_argument("--teacher-img-size", dest="teacher_img_size", type=int, metavar="PX",
                   help="the teacher's input resolution (default: timm's pretrained_cfg of --teacher-model; "
                        "recorded in config.yaml)")
    t.add_argument("--teacher-mean", dest="teacher_mean", type=_floats, metavar="R,G,B",
                   help="the teacher's normalisation mean (default: timm's pretrained_cfg; with --teacher-std)")
    t.add_argument("--teacher-std", dest="teacher_std", type=_floats, metavar="R,G,B",
                   help="the teacher's normalisation std (default: timm's pretrained_cfg; with --teacher-mean)")
    t.add_argument("--teacher-same-input", dest="teacher_same_input", action="store_true", default=None,
                   help="the teacher sees the student's images as they are: --img-size, values in [0, 1], no "
                        "normalisation (for a teacher trained that way)")
    t.add_argument("--teacher-head-cache", dest="teacher_head_cache", metavar="DIR",
                   help="folder of the label-wise heads fitted to a teacher without one (l2d, led, cd, id) "
                        "(default: fitted_heads beside the --output folder)")
    g.add_argument("--lambda", dest="lambdas", action="append", type=_lambda, metavar="NAME=VALUE",
                   help="override a loss weight, e.g. --lambda cd=50 (repeatable)")
    g.add_argument("--method-option", dest="method_options", action="append", type=_option, metavar="KEY=VALUE",
                   help="distiller option, e.g. temperature=4 (repeatable)")
    g.add_argument("--cache-teacher", dest="cache_teacher", action="store_true", default=None,
                   help="compute the teacher's outputs once per image and augmented view, then reuse them")
    g.add_argument("--teacher-views", dest="teacher_views", type=int,
                   help="fixed augmented views per training image (default 8 with --cache-teacher and "
                        "augmentation, else a fresh view every epoch)")
    g.add_argument("--cache-limit-gib", dest="cache_limit_gib", type=float,
                   help="largest teacher cache allowed, in GiB (default 2)")
    g.add_argument("--teacher-precision", dest="teacher_precision", choices=TEACHER_PRECISIONS,
                   help="run the teacher's forward pass in bfloat16 autocast (faster; outputs within about 0.5 %%) "
                        "even when the student trains in float32 (default float32)")
    g.add_argument("--compile-teacher", dest="compile_teacher", action="store_true", default=None,
                   help="torch.compile the teacher (faster after a compile of seconds on a GPU, ~40 s on a CPU)")
    g.add_argument("--gather-embeddings", dest="gather_embeddings", action="store_true", default=None,
                   help="under torchrun: CD/ID see the label-wise embeddings of the global batch")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mlkd", description="Multi-label knowledge distillation (L2D and baselines).")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a model (a teacher, or a student without distillation) with BCE")
    _add_run_options(p)

    p = sub.add_parser("distill", help="train a student under a teacher with a distillation method")
    _add_run_options(p)
    p.add_argument("--method", help=f"distiller: {METHOD_HELP} (default: {DISTILL_METHOD})")
    _add_distill_options(p, teacher_required=False)  # 'vanilla' needs none; the engine checks the others

    p = sub.add_parser("eval", help="evaluate a checkpoint; prints and writes the metrics")
    p.add_argument("--checkpoint", required=True, help="a best.pt or last.pt written by mlkd train/distill")
    p.add_argument("--dataset", help="default: the checkpoint's data set")
    p.add_argument("--data-root", dest="data_root", help="default: the checkpoint's data root")
    p.add_argument("--split", help="default: the checkpoint's test split")
    p.add_argument("--img-size", dest="img_size", type=int, help="default: the checkpoint's resolution")
    p.add_argument("--batch-size", dest="batch_size", type=int, default=64, help="images per forward pass")
    p.add_argument("--threshold", type=float, default=0.5, help="decision threshold of the thr_* metrics")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--workers", type=int, default=0, help="data loader worker processes")
    p.add_argument("--output", help="metrics JSON path (default: eval_<split>.json beside the checkpoint)")

    p = sub.add_parser("bench", help="compare methods over seeds on one teacher (table, JSON, plots)")
    _add_run_options(p)
    _add_distill_options(p, teacher_required=False)  # --teacher or --teacher-model: `compare` checks
    p.add_argument("--methods", default="vanilla,kd,l2d", help="comma-separated distillers (default vanilla,kd,l2d)")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (default 0,1,2)")

    p = sub.add_parser("demo", help="the embedded default end to end: teacher, students, comparison")
    p.add_argument("--output", default="runs/demo", help="folder of the teacher, the students and the comparison")
    p.add_argument("--seeds", help="comma-separated seeds of the students (default: the demo's "
                                   f"{_demo_seeds()}; --quick: {_demo_seeds(quick=True)})")
    p.add_argument("--quick", action="store_true", help="a few-minute smoke version (fewer images and epochs)")
    p.add_argument("--resume", action="store_true",
                   help="continue a stopped demo in --output; this is also what a plain rerun does: unfinished "
                        "runs resume, finished ones are reused, nothing is deleted (a folder holding other files "
                        "is refused)")

    p = sub.add_parser("export", help="export a checkpoint (ONNX graph: images in [0, 1] -> logits)")
    p.add_argument("--checkpoint", required=True, help="a best.pt written by mlkd train/distill")
    p.add_argument("--format", default="onnx", choices=["onnx"], help="export format")
    p.add_argument("--output", help="file to write (default: the checkpoint path with .onnx)")
    p.add_argument("--img-size", dest="img_size", type=int, help="input resolution (default: the checkpoint's)")

    p = sub.add_parser("list", help="list the registered models, distillers and data sets")
    for command in sub.choices.values():
        command.formatter_class = _HelpFormatter
    return parser


def _run_overrides(args: argparse.Namespace, command: str) -> tuple[Any, dict[str, Any]]:
    fields = set(RunConfig.__dataclass_fields__)
    values = {k: v for k, v in vars(args).items() if k in fields and v is not None}
    for key in ("lambdas", "dataset_options", "model_options", "method_options"):
        if key in values:
            values[key] = dict(values[key])
    config: dict[str, Any] = {}
    for path in args.config or []:
        config = merge_configs(config, load_yaml(path))
    if "output" not in values and "output" not in config:
        values["output"] = f"runs/{command}"
    if values.get("resume") and not args.config and command in ("train", "distill"):
        # `--output DIR --resume` alone continues the run with the settings it was started with.
        saved = Path(values.get("output") or config.get("output")) / "config.yaml"
        if saved.is_file():
            log.info("--resume: reading the run's settings from %s", saved)
            config = load_yaml(saved)
        elif (saved.parent / "last.pt").is_file():
            # config.yaml was deleted, but last.pt records the same settings.
            from mlkd.engine.checkpoint import recorded_config

            log.info("--resume: %s is missing; reading the run's settings from %s", saved, saved.parent / "last.pt")
            config = recorded_config(saved.parent / "last.pt")
        else:
            _refuse_unknown_run(saved.parent, values)
    return config, values


def _refuse_unknown_run(output: Path, values: dict[str, Any]) -> None:
    """`--output DIR --resume` where DIR records no settings, and no flag sets the run's: refuse.

    The built-in defaults would start some other run (on the embedded data set, for hours) and record it
    as DIR's, e.g. in a folder holding only the lock of a run stopped before it wrote config.yaml.
    """
    from mlkd.engine.trainer import RESUME_MAY_CHANGE

    if set(values) <= RESUME_MAY_CHANGE:
        raise FileNotFoundError(f"nothing to resume: {output} holds no config.yaml and no last.pt, so the run's "
                                "settings are unknown; start the run again with its settings (its command without "
                                "--resume)")


def merge_configs(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """``extra`` over ``base``; mapping-valued keys (lambdas, *_options) are merged key by key."""
    merged = dict(base)
    for key, value in extra.items():
        both_dicts = isinstance(value, dict) and isinstance(merged.get(key), dict)
        merged[key] = {**merged[key], **value} if both_dicts else value
    return merged


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(message)s")
    try:
        code = _dispatch(args)
        sys.stdout.flush()  # a reader that closed the pipe shows here, while it can still be handled
        return code
    except BrokenPipeError:
        return _stdout_closed()
    except (ValueError, OSError, FloatingPointError, KeyError) as err:
        print(f"mlkd {args.command}: error: {err}", file=sys.stderr)
        return 2
    except (MemoryError, RuntimeError) as err:
        from mlkd.memory import is_out_of_memory

        if not is_out_of_memory(err):
            raise
        print(f"mlkd {args.command}: error: {_out_of_memory(err, args)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"interrupted; {_resume_hint(args)}", file=sys.stderr)
        return 130


def _stdout_closed() -> int:
    """The reader of stdout went away (`mlkd list | head -1`): stop quietly, like other Unix tools.

    Python would report the broken pipe as an error, and again when it flushes stdout at exit; pointing
    stdout at /dev/null silences the second. The exit status is 141 (128 + SIGPIPE), what a shell reports
    for a tool stopped by a closed pipe (``seq 100000 | head -1``).
    """
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):  # stdout is not a file descriptor (captured): nothing to silence
        pass
    return 141


def _out_of_memory(err: BaseException, args: argparse.Namespace) -> str:
    """The message for a failed allocation: the sizes the command used and which to lower."""
    from mlkd.memory import OutOfMemoryError, out_of_memory

    if isinstance(err, OutOfMemoryError):  # the engine already named the sizes
        return str(err)
    sizes, advice = "the sizes in use", "pass a smaller --batch-size or --img-size"
    if args.command in ("train", "distill", "bench"):
        try:
            config, values = _run_overrides(args, args.command)
            cfg = make_config(config, **values)
            sizes = f"images of {cfg.img_size} px in batches of {cfg.batch_size}"
            advice = f"pass a smaller --batch-size (now {cfg.batch_size}) or --img-size (now {cfg.img_size})"
        except Exception:  # the settings are what failed to resolve: keep the general advice
            pass
    elif args.command in ("eval", "export"):
        size = f"{args.img_size} px" if args.img_size else "the checkpoint's resolution"
        sizes, advice = f"images of {size}", f"pass a smaller --img-size (now {size})"
        if args.command == "eval":
            sizes += f" in batches of {args.batch_size}"
            advice = f"pass a smaller --batch-size (now {args.batch_size}) or --img-size (now {size})"
    return str(out_of_memory(err, f"mlkd {args.command}", sizes, advice))


def _resume_hint(args: argparse.Namespace) -> str:
    """How to continue the interrupted command."""
    if args.command == "demo":
        return f"run `mlkd demo --output {args.output}` again (or with --resume): it continues where it stopped"
    if args.command in ("train", "distill"):
        output = args.output or f"runs/{args.command}"
        if not any((Path(output) / name).is_file() for name in ("config.yaml", "last.pt")):
            # Stopped during its set-up: the run removed what it had created, nothing is left to resume.
            return "nothing was written yet; run the same command again"
        return f"continue with `mlkd {args.command} --output {output} --resume`"
    if args.command == "bench":
        return "run the same command again: finished runs are reused, unfinished ones resume"
    return "run the command again"


def _dispatch(args: argparse.Namespace) -> int:
    import mlkd

    if args.command == "list":
        from mlkd.data import list_datasets
        from mlkd.losses import list_distillers
        from mlkd.models import list_models

        print("models (built-in; every timm model name works too):", ", ".join(list_models()))
        print("distillers:", ", ".join(list_distillers()))
        print("data sets:", ", ".join(list_datasets()))
        print()
        print(textwrap.fill(FORMAT_SUMMARY, width=100))
        return 0
    if args.command in ("train", "distill"):
        config, values = _run_overrides(args, args.command)
        if args.command == "distill":
            # Without --method: the config file's (or resumed run's) method, else DISTILL_METHOD (mlkd.distill).
            result = mlkd.distill(config=config, **values)
        else:
            _refuse_distill_settings(config, values)
            result = mlkd.train(config=config, **values)
        _print_metrics(result.metrics, f"test metrics ({result.output / 'metrics.json'})")
        return 0
    if args.command == "eval":
        output = args.output or str(Path(args.checkpoint).parent / f"eval_{args.split or 'test'}.json")
        metrics = mlkd.evaluate(args.checkpoint, args.dataset, args.data_root, args.split, img_size=args.img_size,
                                batch_size=args.batch_size, threshold=args.threshold, device=args.device,
                                workers=args.workers, output=output)
        _print_metrics(metrics, f"metrics ({output})")
        return 0
    if args.command == "bench":
        from mlkd.bench import compare

        config, values = _run_overrides(args, "bench")
        teacher = values.pop("teacher", None) or config.pop("teacher", None)
        output = values.pop("output")
        methods = [m.strip() for m in args.methods.split(",") if m.strip()]
        if not methods:
            raise ValueError(f"--methods names no distiller (got {args.methods!r}); give comma-separated names, "
                             "e.g. --methods vanilla,kd,l2d (see mlkd list)")
        seeds = _int_list(args.seeds, "--seeds")
        result = compare(teacher, methods, seeds, config=make_config(config, **values), output=output)
        from mlkd.bench import markdown_table

        if _is_rank0():
            from mlkd.models.cost import cost_lines

            print(markdown_table(result))
            print("\n".join(cost_lines(result.get("cost"))))
        return 0
    if args.command == "demo":
        from mlkd.demo import run_demo

        run_demo(args.output, seeds=None if args.seeds is None else _int_list(args.seeds, "--seeds"), quick=args.quick)
        return 0
    if args.command == "export":
        path = mlkd.export(args.checkpoint, args.output, format=args.format, img_size=args.img_size)
        print(f"wrote {path}")
        return 0
    raise ValueError(f"unknown command {args.command!r}")


def _refuse_distill_settings(config: dict[str, Any], values: dict[str, Any]) -> None:
    """`mlkd train` on the settings of a distill run (a resumed folder, a config file): name the command."""
    method = config.get("method", "vanilla")
    if method in (None, "vanilla"):
        return
    output = values.get("output") or config.get("output")
    if values.get("resume"):
        raise ValueError(f"{output} holds a distill run (method {method}): resume it with "
                         f"`mlkd distill --output {output} --resume`")
    raise ValueError(f"the settings name the distillation method {method!r}, which `mlkd train` does not run: "
                     "use `mlkd distill` with them, or set method: vanilla to train without a teacher")


def _int_list(text: str, flag: str) -> list[int]:
    try:
        values = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise ValueError(f"{flag} takes comma-separated integers, got {text!r}") from None
    if not values:
        raise ValueError(f"{flag} is empty")
    return values


def _is_rank0() -> bool:
    """Under torchrun only the first process prints results."""
    return int(os.environ.get("RANK", "0")) == 0


def _print_metrics(metrics: dict[str, Any], title: str) -> None:
    if _is_rank0():
        print(format_metrics(metrics, title))


def format_metrics(metrics: dict[str, Any], title: str) -> str:
    """The metrics printout: every score in percent (best_val_mAP included), then the run's facts and costs."""
    from mlkd.models.cost import cost_lines

    lines = [f"{title}, in percent:"]
    for key, value in metrics.items():
        if isinstance(value, float) and key.startswith(("mAP", "topk_", "thr_", "best_val_mAP")):
            lines.append(f"  {key:>14}: {100 * value:6.2f}")
    names = {"split": "split", "num_samples": "images", "num_labels_evaluated": "labels evaluated",
             "threshold": "threshold", "best_epoch": "best epoch"}
    facts = [f"{name} {metrics[key]}" for key, name in names.items() if key in metrics]
    if facts:
        lines.append("  " + ", ".join(facts))
    fit = metrics.get("fit")
    if fit:  # a run without a teacher: how closely its best checkpoint fits its training images (engine/fit.py)
        some = f"{fit['scored']:,} of " if fit["scored"] < fit["train_images"] else ""
        lines.append(f"  training images: mAP {fit['train_mAP']:.2f} on {some}{fit['train_images']:,} of them "
                     "(read as evaluation reads them)"
                     + (f"; held-out fold: {fit['held_out_mAP']:.2f}" if "held_out_mAP" in fit else ""))
    lines += [f"  {line}" for line in cost_lines(metrics.get("cost"))]
    return "\n".join(lines)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
