"""Promises about files and reruns (docs/guarantees.md): safe checkpoints, crash-consistent epochs,
results independent of --quiet, one writer per output folder, and nothing deleted that mlkd did not write."""
from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

import mlkd
from mlkd import files
from mlkd.cli import main
from mlkd.engine import logging as run_logging
from mlkd.engine import trainer as trainer_module
from mlkd.engine.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from mlkd.engine.run_folder import LOCK_NAME, OutputInUseError, RunFolder
from synthetic import write_fashion_like
from tiny_runs import interrupted_in_epoch, tiny_flags, tiny_run

# Timing columns differ between any two runs; everything else must match bit for bit.
TIMING = ("epoch_seconds", "images_per_second")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_fashion_like(tmp_path_factory.mktemp("h1data"), n_train=160, n_test=60)


def tiny(data, output, **overrides):
    return tiny_run(data, output, mosaics=192, **{"threads": 1, **overrides})


def cli_flags(data, output, epochs=1):
    return tiny_flags(data, output, mosaics=192, epochs=epochs, threads=1)


@pytest.fixture(scope="module")
def finished(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("h1runs") / "run"
    mlkd.train(**tiny(data, out))
    return out


# ---------------------------------------------------------------- hostile checkpoints

class _Payload:
    """An object whose unpickling runs a shell command: what a hostile .pt file carries."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch '{self.marker}'",)


def test_checkpoints_load_weights_only_and_restore_every_generator(finished):
    for name in ("last.pt", "best.pt"):
        state = torch.load(finished / name, map_location="cpu", weights_only=True)
        assert "model" in state and "model_args" in state
    rng = torch.load(finished / "last.pt", weights_only=True)["rng"]
    import random

    set_rng_state(rng)
    want = (random.random(), np.random.rand(), torch.rand(1).item())
    path = save_checkpoint({"model": {}, "model_args": {}, "rng": rng_state()}, finished.parent / "rng.pt")
    draws = (random.random(), np.random.rand(), torch.rand(1).item())
    set_rng_state(load_checkpoint(path)["rng"])
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == draws
    assert draws != want
    # Saving refuses what a weights-only load would refuse, naming the key.
    with pytest.raises(TypeError, match=r"\['extra'\].*set"):
        save_checkpoint({"model": {}, "model_args": {}, "extra": {1, 2}}, finished.parent / "bad.pt")


def test_hostile_checkpoint_is_refused_and_its_payload_never_runs(finished, data, tmp_path, capsys):
    marker = tmp_path / "payload-ran"
    good = load_checkpoint(finished / "last.pt")
    evil = tmp_path / "evil.pt"
    torch.save({**good, "extra": _Payload(marker)}, evil)
    # The file is a real attack: an unsafe load runs the command.
    torch.load(evil, weights_only=False)
    assert marker.exists()
    marker.unlink()

    with pytest.raises(ValueError, match=r"refused.*pickled Python object \(posix\.system\)"):
        load_checkpoint(evil)
    for argv in (["eval", "--checkpoint", str(evil), "--device", "cpu"],
                 ["export", "--checkpoint", str(evil), "--output", str(tmp_path / "x.onnx")],
                 ["distill", "--method", "kd", "--teacher", str(evil), *cli_flags(data, tmp_path / "d")]):
        assert main(argv) == 2, argv
        assert "refused" in capsys.readouterr().err
    # --resume reads last.pt the same way.
    shutil.copytree(finished, tmp_path / "resumed")
    shutil.copy(evil, tmp_path / "resumed" / "last.pt")
    assert main(["train", "--output", str(tmp_path / "resumed"), "--resume"]) == 2
    assert "refused" in capsys.readouterr().err
    assert not marker.exists()


# ---------------------------------------------------------------- crash consistency

class Killed(BaseException):
    """A simulated kill -9: not an Exception, so nothing on the way up treats it as an error."""


def _kill_at(monkeypatch, k):
    """Make the k-th atomic rename of a run the instant the process dies (after its data was written)."""
    real = files.replace
    calls = {"n": 0}

    def replace(tmp, path):
        calls["n"] += 1
        if calls["n"] == k:
            # What a real kill leaves behind: a complete temporary file that was never renamed.
            shutil.copy(tmp, tmp.with_name(f".{path.name}.killed00.tmp"))
            raise Killed
        real(tmp, path)

    monkeypatch.setattr(files, "replace", replace)
    return calls


def _tensors_equal(a, b, where="") -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and torch.equal(a, b), where
    elif isinstance(a, dict):
        keys = set(a) - {"output", *TIMING}
        assert keys == set(b) - {"output", *TIMING}, where
        for k in keys:
            _tensors_equal(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _tensors_equal(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


def _snapshot(folder):
    rows = list(csv.DictReader((folder / "log.csv").open()))
    return {
        "last": torch.load(folder / "last.pt", weights_only=True),
        "best": torch.load(folder / "best.pt", weights_only=True),
        "metrics": json.loads((folder / "metrics.json").read_text()),
        "jsonl": [json.loads(line) for line in (folder / "log.jsonl").read_text().splitlines()],
        "csv": [{k: v for k, v in r.items() if k not in TIMING} for r in rows],
        "files": sorted(p.name for p in folder.iterdir()),
        "scores": {k: torch.from_numpy(v) for k, v in np.load(folder / "test_scores.npz").items()}
        if (folder / "test_scores.npz").exists() else None,
    }


def test_a_kill_at_any_write_then_resume_ends_as_the_uninterrupted_run(data, tmp_path, monkeypatch):
    # The plot is drawn from the history again by every run that finishes; it is not compared here.
    monkeypatch.setattr(trainer_module, "plot_learning_curves", lambda *args, **kwargs: None)
    small = {"dataset_options": {"num_mosaics": 128}}
    counter = _kill_at(monkeypatch, 0)  # counts only
    mlkd.train(**tiny(data, tmp_path / "straight", **small))
    writes = counter["n"]
    want = _snapshot(tmp_path / "straight")
    # config.yaml, then per epoch last.pt [best.pt] log.jsonl log.csv, then metrics.json and test scores.
    assert writes >= 1 + 2 * 3 + 1
    for k in range(1, writes + 1):
        out = tmp_path / f"killed{k}"
        _kill_at(monkeypatch, k)
        with pytest.raises(Killed):
            mlkd.train(**tiny(data, out, **small))
        monkeypatch.setattr(files, "replace", os.replace)
        mlkd.train(**tiny(data, out, resume=True, **small))
        got = _snapshot(out)
        assert got["files"] == want["files"], k  # orphan temporaries removed, nothing missing
        _tensors_equal(got, want, f"kill at write {k}")


def test_a_one_epoch_run_killed_before_best_pt_finishes_with_resume(data, tmp_path, monkeypatch):
    _kill_at(monkeypatch, 3)  # config.yaml, last.pt, then best.pt: the process dies
    with pytest.raises(Killed):
        mlkd.train(**tiny(data, tmp_path / "one", epochs=1))
    assert not (tmp_path / "one" / "best.pt").exists()
    monkeypatch.setattr(files, "replace", os.replace)
    result = mlkd.train(**tiny(data, tmp_path / "one", epochs=1, resume=True))
    assert load_checkpoint(tmp_path / "one" / "best.pt")["epoch"] == 1 and result.best_epoch == 1
    assert [r["epoch"] for r in result.history] == [1]


# ---------------------------------------------------------------- --quiet

def test_quiet_never_changes_the_numbers(data, tmp_path, monkeypatch, caplog):
    quiet = mlkd.train(**tiny(data, tmp_path / "quiet"))
    # Without a terminal: lines in the log instead of a bar, one per epoch at least.
    monkeypatch.setattr(run_logging, "PROGRESS_INTERVAL_S", 0.0)
    with caplog.at_level("INFO", logger="mlkd"):
        mlkd.train(**tiny(data, tmp_path / "lines", quiet=False))
    text = caplog.text
    assert "epoch 1/2: 1/" in text and "epoch 2/2  " in text
    # On a terminal: a tqdm bar; and quiet may change on resume.
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    mlkd.train(**tiny(data, tmp_path / "bar", quiet=False))
    with interrupted_in_epoch(monkeypatch, 2):
        mlkd.train(**tiny(data, tmp_path / "switched"))
    mlkd.train(**tiny(data, tmp_path / "switched", quiet=False, resume=True))
    want = load_checkpoint(tmp_path / "quiet" / "last.pt")["model"]
    for name in ("lines", "bar", "switched"):
        _tensors_equal(load_checkpoint(tmp_path / name / "last.pt")["model"], want, name)
    assert quiet.metrics["mAP"] == json.loads((tmp_path / "bar" / "metrics.json").read_text())["mAP"]


@pytest.mark.parametrize("terminal", [True, False])
def test_progress_never_iterates_its_loader_itself(terminal, monkeypatch):
    from torch.utils.data import DataLoader

    monkeypatch.setattr(sys.stderr, "isatty", lambda: terminal, raising=False)

    draws = {"iter": 0}

    class Counting(DataLoader):
        def __iter__(self):
            draws["iter"] += 1
            return super().__iter__()

    loader = Counting(list(range(10)), batch_size=2, shuffle=True, generator=torch.Generator().manual_seed(0))
    assert len(list(run_logging.progress(loader, len(loader), "x", enabled=True))) == 5
    assert draws["iter"] == 1


# ---------------------------------------------------------------- one writer per folder

def test_a_second_run_into_a_busy_folder_is_refused_and_a_dead_holder_blocks_nothing(data, tmp_path, capsys):
    out = tmp_path / "busy"
    out.mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, os, sys, time\n"
         f"fd = os.open({str(out / LOCK_NAME)!r}, os.O_RDWR | os.O_CREAT)\n"
         "fcntl.flock(fd, fcntl.LOCK_EX)\nos.write(fd, str(os.getpid()).encode())\n"
         "print('locked', flush=True)\ntime.sleep(120)\n"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert main(["train", *cli_flags(data, out)]) == 2
        err = capsys.readouterr().err
        assert f"pid {holder.pid}" in err and str(out) in err
        assert sorted(p.name for p in out.iterdir()) == [LOCK_NAME]  # nothing written meanwhile
    finally:
        holder.kill()  # SIGKILL: the kernel drops the lock with the process
        holder.wait()
    assert main(["train", *cli_flags(data, out)]) == 0
    # While a run holds the folder, the same process cannot take it twice either.
    with RunFolder(out):
        with pytest.raises(OutputInUseError):
            RunFolder(out).open()


# ---------------------------------------------------------------- output folders

def test_failed_runs_leave_no_folder_and_user_files_stay(data, tmp_path, capsys):
    new = tmp_path / "a" / "b"
    assert main(["distill", "--method", "l2d", *cli_flags(data, new)]) == 2  # no teacher: fails in setup
    assert "--teacher" in capsys.readouterr().err
    assert not (tmp_path / "a").exists()
    mine = tmp_path / "mine"
    mine.mkdir()
    assert main(["distill", "--method", "l2d", *cli_flags(data, mine)]) == 2
    assert mine.is_dir() and list(mine.iterdir()) == []  # the user's folder stays, emptied of mlkd's lock only
    (mine / "notes.txt").write_text("keep me")
    assert main(["train", *cli_flags(data, mine)]) == 2
    assert "not an mlkd run (notes.txt)" in capsys.readouterr().err
    assert (mine / "notes.txt").read_text() == "keep me" and len(list(mine.iterdir())) == 1


def test_unwritable_outputs_get_clear_errors(data, tmp_path, capsys, monkeypatch):
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    assert main(["train", *cli_flags(data, blocker / "run")]) == 2
    assert f"{blocker} is a file" in capsys.readouterr().err
    locked = tmp_path / "ro"
    locked.mkdir()
    locked.chmod(0o555)
    if os.access(locked, os.W_OK):  # root ignores the mode: simulate the kernel's answer
        real_open = os.open

        def refuse(path, *args, **kwargs):
            if str(path).startswith(str(locked)):
                raise PermissionError(13, "Permission denied", str(path))
            return real_open(path, *args, **kwargs)

        monkeypatch.setattr(os, "open", refuse)
    assert main(["train", *cli_flags(data, locked)]) == 2
    err = capsys.readouterr().err
    assert f"cannot write into the output folder {locked}" in err and "writable --output" in err


def test_disk_full_names_the_file_and_keeps_the_old_one(tmp_path, monkeypatch):
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full")
    path = tmp_path / "ck.pt"
    save_checkpoint({"model": {"w": torch.ones(3)}, "model_args": {}}, path)
    monkeypatch.setattr(files, "create_temp", lambda p: (os.open("/dev/full", os.O_WRONLY), tmp_path / ".never"))
    with pytest.raises(OSError, match=rf"could not write {path}.*disk is full"):
        save_checkpoint({"model": {"w": torch.zeros(1000)}, "model_args": {}}, path)
    monkeypatch.undo()
    assert torch.equal(load_checkpoint(path)["model"]["w"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["ck.pt"]


def test_outputs_follow_the_umask(finished, tmp_path):
    umask = os.umask(0)
    os.umask(umask)
    want = 0o666 & ~umask
    for name in ("last.pt", "best.pt", "log.csv", "metrics.json", "config.yaml"):
        assert (finished / name).stat().st_mode & 0o777 == want, name
    pytest.importorskip("onnx")
    onnx_path = mlkd.export(finished / "best.pt", tmp_path / "m.onnx")
    assert onnx_path.stat().st_mode & 0o777 == want


# ---------------------------------------------------------------- resume

def test_resume_from_the_folder_alone_and_clear_refusals(data, finished, tmp_path, capsys):
    out = tmp_path / "r"
    assert main(["train", *cli_flags(data, out, epochs=2)]) == 0
    want = load_checkpoint(out / "last.pt")["model"]
    # A finished run resumed with no other flags: its own config.yaml, the report written again.
    assert main(["train", "--output", str(out), "--resume"]) == 0
    _tensors_equal(load_checkpoint(out / "last.pt")["model"], want)
    assert main(["train", "--output", str(out), "--resume", "--epochs", "3"]) == 2
    err = capsys.readouterr().err
    assert "epochs: 2 -> 3" in err and f"--config {out / 'config.yaml'} --resume" in err
    # Data with other classes: a clear refusal, not a load_state_dict traceback.
    state = load_checkpoint(out / "last.pt")
    state["classes"] = ["a", "b", "c"]
    save_checkpoint(state, out / "last.pt")
    assert main(["train", "--output", str(out), "--resume"]) == 2
    assert "trained on 3 classes" in capsys.readouterr().err
    # Nothing to resume.
    assert main(["train", *cli_flags(data, tmp_path / "never"), "--resume"]) == 2
    assert "nothing to resume" in capsys.readouterr().err


def test_a_resume_refuses_an_objective_whose_defaults_changed(data, finished, tmp_path, monkeypatch, capsys):
    # What an mlkd update that changes a method's default weight does to a run made before it: the run's
    # config.yaml is unchanged (no --lambda was given), so only the recorded objective can tell.
    out = tmp_path / "kd"
    mlkd.distill(**tiny(data, out, method="kd", teacher=str(finished / "best.pt"), epochs=1))
    recorded = load_checkpoint(out / "last.pt")["objective"]
    assert "lambda_kd=192" in recorded and "temperature=1" in recorded
    assert load_checkpoint(out / "best.pt")["objective"] == recorded
    # the same defaults: a finished run is reported again, as before
    mlkd.distill(**tiny(data, out, method="kd", teacher=str(finished / "best.pt"), epochs=1, resume=True))
    from mlkd.losses.objective import KDDistiller
    monkeypatch.setattr(KDDistiller.__init__, "__kwdefaults__", {**KDDistiller.__init__.__kwdefaults__,
                                                                 "lambda_kd": 10.0})
    with pytest.raises(ValueError, match="objective") as refused:
        mlkd.distill(**tiny(data, out, method="kd", teacher=str(finished / "best.pt"), epochs=1, resume=True))
    assert "lambda_kd=192" in str(refused.value) and "lambda_kd=10," in str(refused.value)
    assert "another --output" in str(refused.value)
    monkeypatch.undo()
    # A checkpoint from before the record: KD's defaults of that time (τ 4, λ 10) are assumed, so it is refused too,
    # unless its run gave the weights that are today's defaults explicitly.
    state = load_checkpoint(out / "last.pt")
    del state["objective"]
    save_checkpoint(state, out / "last.pt")
    with pytest.raises(ValueError, match="lambda_kd=10, temperature=4"):
        mlkd.distill(**tiny(data, out, method="kd", teacher=str(finished / "best.pt"), epochs=1, resume=True))
    explicit = tmp_path / "explicit"
    options = dict(method="kd", teacher=str(finished / "best.pt"), epochs=1, lambdas={"kd": 192.0},
                   method_options={"temperature": 1.0})
    mlkd.distill(**tiny(data, explicit, **options))
    state = load_checkpoint(explicit / "last.pt")
    del state["objective"]
    save_checkpoint(state, explicit / "last.pt")
    mlkd.distill(**tiny(data, explicit, resume=True, **options))
    # A vanilla run from before the record resumes as before: no default of it changed.
    plain = tmp_path / "plain"
    shutil.copytree(finished, plain)
    state = load_checkpoint(plain / "last.pt")
    state.pop("objective", None)
    save_checkpoint(state, plain / "last.pt")
    mlkd.train(**tiny(data, plain, resume=True))


def test_orphan_cleanup_touches_only_mlkd_temporaries(data, finished, tmp_path):
    out = tmp_path / "o"
    shutil.copytree(finished, out)
    ours = out / ".last.pt.abcd1234.tmp"
    theirs = [out / ".notes.txt.abcd1234.tmp", out / ".last.pt.tmp", out / "last.pt.abcd1234.tmp"]
    for p in [ours, *theirs]:
        p.write_bytes(b"x")
    mlkd.train(**tiny(data, out, resume=True))
    assert not ours.exists() and all(p.exists() for p in theirs)


# ---------------------------------------------------------------- the demo

def test_demo_never_deletes_and_continues_where_it_stopped(data, tmp_path, monkeypatch, caplog):
    from mlkd import demo

    user = tmp_path / "user"
    user.mkdir()
    (user / "thesis.tex").write_text("years of work")
    with pytest.raises(FileExistsError, match="not an mlkd demo run"):
        demo.run_demo(user, seeds=(0,))
    assert [p.name for p in user.iterdir()] == ["thesis.tex"]

    common = {k: v for k, v in tiny(data, "x").items() if k not in ("output", "quiet", "epochs")}
    settings = {"common": common, "teacher": {"model": "tiny_cnn", "epochs": 2}, "student": {"epochs": 1},
                "methods": [{"label": "vanilla", "method": "vanilla"}, {"label": "KD", "method": "kd"}]}
    monkeypatch.setattr(demo, "demo_settings", lambda quick=False: settings)
    real_fit = demo.compare.__globals__["fit"]
    calls = []
    stop = {"at": 3}

    def stopped_at_second_student(cfg):
        calls.append((cfg.output, cfg.resume))
        if len(calls) == stop["at"]:
            raise KeyboardInterrupt
        return real_fit(cfg)

    monkeypatch.setattr(demo, "fit", stopped_at_second_student)
    monkeypatch.setitem(demo.compare.__globals__, "fit", stopped_at_second_student)
    out = tmp_path / "demo"
    with caplog.at_level("INFO", logger="mlkd"), pytest.raises(KeyboardInterrupt):
        demo.run_demo(out, seeds=(0,))
    assert "epoch 2/2" in caplog.text  # the teacher phase reports each epoch
    teacher_mtime = (out / "teacher" / "last.pt").stat().st_mtime_ns
    calls.clear()
    stop["at"] = 0
    result = demo.run_demo(out, seeds=(0,))
    assert [resume for _, resume in calls] == [True, True, False]  # teacher and vanilla continue, KD starts
    assert (out / "teacher" / "last.pt").stat().st_mtime_ns == teacher_mtime  # not trained again
    assert set(result["methods"]) == {"vanilla", "KD"} and (out / "comparison.md").is_file()
    with pytest.raises(FileExistsError, match="other settings"):
        settings["teacher"] = {"model": "tiny_cnn", "epochs": 3}
        demo.run_demo(out, seeds=(0,))


# ---------------------------------------------------------------- a run stopped during its set-up

def test_resume_of_a_folder_without_settings_is_refused(tmp_path, capsys):
    # A run stopped after taking its folder's lock, before writing config.yaml, left only the lock:
    # `--output R --resume` used to start the built-in default run there and record it as R's.
    run = tmp_path / "R"
    run.mkdir()
    (run / LOCK_NAME).touch()
    for folder in (run, tmp_path / "never"):
        assert main(["train", "--output", str(folder), "--resume", "--quiet"]) == 2
        err = capsys.readouterr().err
        assert f"nothing to resume: {folder} holds no config.yaml and no last.pt" in err
        assert "start the run again with its settings" in err
    assert [p.name for p in run.iterdir()] == [LOCK_NAME] and not (tmp_path / "never").exists()


def test_a_run_killed_during_set_up_resumes_as_itself(data, tmp_path, monkeypatch):
    # config.yaml is written right after the lock, before the models are built (seconds with timm
    # models or --compile-teacher): a kill -9 there leaves the settings that --resume continues.
    def killed(*args, **kwargs):
        raise Killed

    monkeypatch.setattr(trainer_module, "create_model", killed)
    with pytest.raises(Killed):
        main(["train", *cli_flags(data, tmp_path / "killed")])
    assert sorted(p.name for p in (tmp_path / "killed").iterdir()) == [LOCK_NAME, "config.yaml"]
    monkeypatch.undo()
    assert main(["train", "--output", str(tmp_path / "killed"), "--resume"]) == 0
    assert main(["train", *cli_flags(data, tmp_path / "straight")]) == 0
    _tensors_equal(load_checkpoint(tmp_path / "killed" / "last.pt")["model"],
                   load_checkpoint(tmp_path / "straight" / "last.pt")["model"])


def test_ctrl_c_during_set_up_leaves_no_folder_behind(data, tmp_path, monkeypatch, capsys):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(trainer_module, "create_model", interrupted)
    assert main(["train", *cli_flags(data, tmp_path / "a" / "b")]) == 130
    assert not (tmp_path / "a").exists()
    # Nothing is left to resume, so the hint is not --resume (which would refuse).
    assert "nothing was written yet; run the same command again" in capsys.readouterr().err
    mine = tmp_path / "mine"
    mine.mkdir()
    with pytest.raises(KeyboardInterrupt):
        mlkd.train(**tiny(data, mine))
    assert mine.is_dir() and list(mine.iterdir()) == []  # the user's folder stays, emptied of mlkd's files


@pytest.mark.parametrize("k", [4, 6])
def test_tensorboard_holds_each_committed_epoch_once_after_a_kill(k, data, tmp_path, monkeypatch):
    # Writes: config.yaml, then epoch 1's last.pt, best.pt, log.jsonl, log.csv (its events after them),
    # then epoch 2's last.pt. Killed at 4, epoch 1 is committed but its events were never written;
    # killed at 6, they were. Either way the resumed run's events hold epochs 1 and 2, once each.
    loader = pytest.importorskip("tensorboard.backend.event_processing.event_file_loader")
    out = tmp_path / "tb"
    _kill_at(monkeypatch, k)
    with pytest.raises(Killed):
        mlkd.train(**tiny(data, out, tensorboard=True))
    monkeypatch.setattr(files, "replace", os.replace)
    (out / "tensorboard" / "notes.txt").write_text("not mlkd's")
    mlkd.train(**tiny(data, out, tensorboard=True, resume=True))
    events = sorted((out / "tensorboard").glob("events.out.tfevents.*"))
    counts = {}
    for path in events:
        for event in loader.EventFileLoader(str(path)).Load():
            for value in event.summary.value:
                counts[value.tag, event.step] = counts.get((value.tag, event.step), 0) + 1
    assert {step for _, step in counts} == {1, 2} and set(counts.values()) == {1}
    assert ("val_mAP", 1) in counts and len(events) == 1
    assert (out / "tensorboard" / "notes.txt").read_text() == "not mlkd's"
