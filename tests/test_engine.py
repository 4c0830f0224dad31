"""End-to-end tests of training, distillation, evaluation, comparison and export on tiny CPU runs."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import yaml

import mlkd
from mlkd.cli import main
from mlkd.engine.checkpoint import load_checkpoint, save_checkpoint
from synthetic import write_fashion_like
from tiny_runs import interrupted_in_epoch, tiny_flags, tiny_run

HEAD = {"embed_dim": 32, "num_heads": 2, "ffn_dim": 32}


def cli_args(root, output, *extra: str, epochs: int = 2) -> list[str]:
    return [*tiny_flags(root, output, mosaics=256, epochs=epochs, head=HEAD), *extra]


@pytest.fixture(scope="session")
def data_root(tmp_path_factory):
    return write_fashion_like(tmp_path_factory.mktemp("fashion"))


@pytest.fixture(scope="session")
def teacher(data_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "teacher"
    assert main(["train", *cli_args(data_root, out, epochs=3)]) == 0
    return out


def run_config(data_root, output, **overrides):
    return tiny_run(data_root, output, mosaics=256, head=HEAD, **overrides)


def test_train_writes_every_output(teacher):
    for name in ("config.yaml", "last.pt", "best.pt", "log.csv", "log.jsonl", "learning_curve.png", "metrics.json"):
        assert (teacher / name).is_file(), name
    metrics = json.loads((teacher / "metrics.json").read_text())
    for key in ("mAP", "topk_OF1", "topk_CF1", "thr_CP", "thr_CR", "thr_CF1", "thr_OP", "thr_OR", "thr_OF1"):
        assert 0.0 <= metrics[key] <= 1.0, key
    # The synthetic classes are easy: three epochs must learn far more than chance (~0.3 mAP).
    assert metrics["mAP"] > 0.6
    log = [json.loads(line) for line in (teacher / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2, 3]
    assert metrics["best_val_mAP"] == max(r["val_mAP"] for r in log)
    config = yaml.safe_load((teacher / "config.yaml").read_text())
    assert config["model"] == "tiny_cnn" and config["epochs"] == 3
    ckpt = load_checkpoint(teacher / "last.pt")
    assert {"optimizer", "scheduler", "scaler", "rng", "epoch", "distiller"} <= set(ckpt)


def test_eval_reproduces_the_final_metrics(teacher, data_root, tmp_path):
    out = tmp_path / "eval.json"
    assert main(["eval", "--checkpoint", str(teacher / "best.pt"), "--data-root", str(data_root),
                 "--device", "cpu", "--output", str(out)]) == 0
    again = json.loads(out.read_text())
    final = json.loads((teacher / "metrics.json").read_text())
    for key in ("mAP", "topk_OF1", "topk_CF1", "thr_CF1", "thr_OF1"):
        assert again[key] == pytest.approx(final[key], abs=1e-12), key


@pytest.mark.parametrize("method", ["vanilla", "l2d", "mld", "led", "cd", "id", "kd", "ps", "mse", "rkd", "pkt",
                                    "reviewkd"])
def test_distill_every_method(method, teacher, data_root, tmp_path):
    out = tmp_path / method
    # The student's head is narrower than the teacher's (d = 24 vs 32).
    assert main(["distill", "--teacher", str(teacher / "best.pt"), "--method", method,
                 *cli_args(data_root, out, epochs=1), "--model-option", "embed_dim=24"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert math.isfinite(metrics["mAP"]) and metrics["method"] == method
    student = load_checkpoint(out / "best.pt")
    # The student checkpoint holds exactly the student's tensors, never the teacher's.
    assert student["model_args"]["embed_dim"] == 24
    fresh = mlkd.create_model(**student["model_args"]).state_dict()
    assert student["model"].keys() == fresh.keys()
    assert all(student["model"][k].shape == fresh[k].shape for k in fresh)
    log = json.loads((out / "log.jsonl").read_text().splitlines()[0])
    assert "train_bce" in log


def test_resume_matches_an_uninterrupted_run(teacher, data_root, tmp_path, monkeypatch):
    common = dict(teacher=str(teacher / "best.pt"), method="l2d", epochs=3)
    straight = mlkd.distill(**run_config(data_root, tmp_path / "straight", **common))

    with interrupted_in_epoch(monkeypatch, 3):
        mlkd.distill(**run_config(data_root, tmp_path / "killed", **common))
    assert load_checkpoint(tmp_path / "killed" / "last.pt")["epoch"] == 2
    resumed = mlkd.distill(**run_config(data_root, tmp_path / "killed", resume=True, **common))

    a = load_checkpoint(tmp_path / "straight" / "last.pt")["model"]
    b = load_checkpoint(tmp_path / "killed" / "last.pt")["model"]
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert resumed.metrics["mAP"] == straight.metrics["mAP"]
    assert [r["epoch"] for r in resumed.history] == [1, 2, 3]

    # Resuming with other settings would silently train something else: refused with the difference.
    with pytest.raises(ValueError, match=r"epochs: 3 -> 4"):
        mlkd.distill(**run_config(data_root, tmp_path / "killed", resume=True, **{**common, "epochs": 4}))


def test_teacher_cache_trains_the_same_student(teacher, data_root, tmp_path):
    common = dict(teacher=str(teacher / "best.pt"), method="l2d", epochs=2)
    plain = mlkd.distill(**run_config(data_root, tmp_path / "plain", **common))
    cached = mlkd.distill(**run_config(data_root, tmp_path / "cached", cache_teacher=True, **common))
    # The teacher runs on other batch compositions with the cache (only the images not cached yet),
    # so its outputs agree to float rounding: every logged loss term agrees to that precision.
    # (Weights are not compared: Adam turns rounding-level gradients into full-size steps.)
    assert len(plain.history) == len(cached.history) == 2
    for p_rec, c_rec in zip(plain.history, cached.history):
        for key in ("train_bce", "train_mld", "train_cd", "train_id"):
            assert c_rec[key] == pytest.approx(p_rec[key], rel=1e-5), key
    assert cached.metrics["mAP"] == pytest.approx(plain.metrics["mAP"], abs=0.01)


def test_bench_writes_the_comparison(teacher, data_root, tmp_path):
    out = tmp_path / "bench"
    assert main(["bench", "--teacher", str(teacher / "best.pt"), "--methods", "vanilla,l2d", "--seeds", "0,1",
                 *cli_args(data_root, out, epochs=1)]) == 0
    result = json.loads((out / "comparison.json").read_text())
    assert set(result["methods"]) == {"vanilla", "l2d"}
    for stats in result["methods"].values():
        values = stats["mAP"]["values"]
        assert len(values) == 2
        assert stats["mAP"]["mean"] == pytest.approx(np.mean(values))
        assert stats["mAP"]["std"] == pytest.approx(np.std(values, ddof=1))
    # The per-run metrics feed the table unchanged.
    run = json.loads((out / "l2d" / "seed1" / "metrics.json").read_text())
    assert run["mAP"] in result["methods"]["l2d"]["mAP"]["values"]
    table = (out / "comparison.md").read_text()
    assert "| teacher |" in table and ("| vanilla |" in table or "| **vanilla** |" in table)
    assert (out / "comparison_map.png").stat().st_size > 0
    assert (out / "ap_gain_per_label.png").stat().st_size > 0


def test_export_onnx_matches_the_checkpoint(teacher, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    path = tmp_path / "model.onnx"
    assert main(["export", "--checkpoint", str(teacher / "best.pt"), "--output", str(path)]) == 0
    model, state = mlkd.engine.checkpoint.model_from_checkpoint(teacher / "best.pt")
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        expected = model(x).logits.numpy()
    got = ort.InferenceSession(str(path)).run(None, {ort.InferenceSession(str(path)).get_inputs()[0].name: x.numpy()})[0]
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


def test_export_folds_the_input_normalisation(teacher, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    state = load_checkpoint(teacher / "best.pt")
    mean, std = [0.2, 0.3, 0.4], [0.5, 0.25, 2.0]
    state["input_norm"] = {"mean": mean, "std": std}
    ckpt = save_checkpoint(state, tmp_path / "normed.pt")
    path = mlkd.export(ckpt, tmp_path / "normed.onnx")
    model, _ = mlkd.engine.checkpoint.model_from_checkpoint(ckpt)
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        expected = model((x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)).logits
    session = ort.InferenceSession(str(path))
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    np.testing.assert_allclose(got, expected.numpy(), rtol=1e-4, atol=1e-4)


def test_teacher_sees_its_own_resolution_and_normalisation(teacher, tmp_path):
    import torch.nn.functional as F

    from mlkd.engine.teacher import load_teacher

    state = load_checkpoint(teacher / "best.pt")
    state["config"]["img_size"] = 48
    state["input_norm"] = {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}
    ckpt = save_checkpoint(state, tmp_path / "t48.pt")
    model, prep = load_teacher(str(ckpt), state["classes"], torch.device("cpu"))
    assert not any(p.requires_grad for p in model.parameters()) and not model.training
    x = torch.rand(2, 3, 32, 32)
    want = (F.interpolate(x, size=(48, 48), mode="bilinear", align_corners=False, antialias=True) - 0.5) / 0.25
    torch.testing.assert_close(prep(x), want)


def test_output_folder_is_not_overwritten(teacher, data_root, capsys):
    assert main(["train", *cli_args(data_root, teacher)]) == 2
    assert "--resume" in capsys.readouterr().err


def test_bad_flags_and_inputs(teacher, data_root, tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["distill", "--lambda", "cd"])  # argparse: NAME=VALUE required
    assert "NAME=VALUE" in capsys.readouterr().err

    assert main(["distill", "--teacher", str(teacher / "best.pt"), "--method", "l3d",
                 *cli_args(data_root, tmp_path / "a")]) == 2
    err = capsys.readouterr().err
    assert "l3d" in err and "l2d" in err

    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    assert main(["distill", "--teacher", str(garbage), *cli_args(data_root, tmp_path / "b")]) == 2
    assert "cannot be read" in capsys.readouterr().err

    assert main(["distill", "--method", "l2d", *cli_args(data_root, tmp_path / "g")]) == 2
    assert "pass --teacher" in capsys.readouterr().err

    missing = tmp_path / "missing.pt"
    assert main(["distill", "--teacher", str(missing), *cli_args(data_root, tmp_path / "c")]) == 2
    assert "does not exist" in capsys.readouterr().err

    # A teacher trained on other classes.
    state = load_checkpoint(teacher / "best.pt")
    state["classes"] = [f"c{i}" for i in range(len(state["classes"]))]
    other = save_checkpoint(state, tmp_path / "other.pt")
    assert main(["distill", "--teacher", str(other), *cli_args(data_root, tmp_path / "d")]) == 2
    assert "trained on classes" in capsys.readouterr().err

    assert main(["train", *cli_args(tmp_path / "no_such_root", tmp_path / "e")]) == 2
    assert "no_such_root" in capsys.readouterr().err

    bad_cfg = tmp_path / "bad.yaml"
    bad_cfg.write_text("epochz: 3\n")
    assert main(["train", "--config", str(bad_cfg), *cli_args(data_root, tmp_path / "f")]) == 2
    err = capsys.readouterr().err
    assert "epochz" in err and "did you mean epochs" in err


def test_config_files_merge_and_flags_win(data_root, tmp_path):
    from mlkd.cli import build_parser, _run_overrides

    a = tmp_path / "a.yaml"
    a.write_text("epochs: 7\nlambdas: {cd: 5}\nmodel: small_cnn\n")
    b = tmp_path / "b.yaml"
    b.write_text("lambdas: {id: 9}\nmodel: tiny_cnn\n")
    args = build_parser().parse_args(["distill", "--teacher", "t.pt", "--config", str(a), "--config", str(b),
                                      "--epochs", "2", "--lambda", "mld=3"])
    config, values = _run_overrides(args, "distill")
    cfg = mlkd.config.make_config(config, **values)
    assert cfg.epochs == 2 and cfg.model == "tiny_cnn"
    assert cfg.lambdas == {"cd": 5, "id": 9, "mld": 3.0}


def test_atomic_checkpoint_keeps_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "ck.pt"
    save_checkpoint({"model": {"w": torch.ones(2)}, "model_args": {}}, path)

    def broken_save(obj, f, *args, **kwargs):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError):
        save_checkpoint({"model": {"w": torch.zeros(2)}, "model_args": {}}, path)
    monkeypatch.undo()
    assert torch.equal(load_checkpoint(path)["model"]["w"], torch.ones(2))
    assert [p.name for p in tmp_path.iterdir()] == ["ck.pt"]


def test_a_run_reads_its_data_once(data_root, tmp_path, monkeypatch):
    # Pre-flight builds and checks the data sets, and the run trains on those same sets: each split
    # is read once (the carved validation set reads the training split again, with the eval transform).
    from mlkd.data.fashion_mosaic import FashionMosaic

    built = []
    real_init = FashionMosaic.__init__

    def counting_init(self, root=None, split="train", *args, **kwargs):
        real_init(self, root, split, *args, **kwargs)
        built.append(split)

    monkeypatch.setattr(FashionMosaic, "__init__", counting_init)
    mlkd.train(**run_config(data_root, tmp_path / "once", epochs=1))
    assert sorted(built) == ["test", "train", "train"]


def test_no_import_circle_in_the_package():
    # Every import of an mlkd module by another, at module level or inside a function, as a graph;
    # a strongly connected set of more than one module is a circle (preflight <-> trainer was one).
    import ast
    from pathlib import Path

    package = Path(mlkd.__file__).parent
    modules = {}
    for path in package.rglob("*.py"):
        parts = list(path.relative_to(package.parent).with_suffix("").parts)
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph = {}
    for name, path in modules.items():
        here = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(here.split(".")[:len(here.split(".")) - node.level + 1] + ([base] if base else []))
                targets |= {f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names}
        graph[name] = {t for t in targets if t in modules and t != name}

    def reachable(start):
        seen, todo = set(), [start]
        while todo:
            for nxt in graph[todo.pop()] - seen:
                seen.add(nxt)
                todo.append(nxt)
        return seen

    circles = sorted(name for name in graph if name in reachable(name))
    assert circles == [], f"import circle among {circles}"
