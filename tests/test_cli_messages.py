"""What the command line says when something goes wrong (issue 21: M5, L1, L4): outputs that would replace
their input, out-of-memory errors, closed pipes, write failures by cause, and resuming from a run folder."""
from __future__ import annotations

import errno
import os
import subprocess
import sys
import textwrap

import pytest
import torch
import yaml

import mlkd
from mlkd.cli import main
from mlkd.engine.checkpoint import load_checkpoint, save_checkpoint
from mlkd.engine.evaluate import ModelInput, eval_loader, predict
from mlkd.files import atomic_write
from mlkd.memory import OutOfMemoryError
from mlkd.models import create_model
from synthetic import write_fashion_like

SMALL_HEAD = dict(embed_dim=16, num_heads=2, ffn_dim=16)


@pytest.fixture
def checkpoint(tmp_path):
    model = create_model("tiny_cnn", 3, **SMALL_HEAD)
    return save_checkpoint({"model": model.state_dict(), "model_args": model.model_args, "classes": ["a", "b", "c"],
                            "config": {"dataset": "fashion_mosaic", "img_size": 32}}, tmp_path / "best.pt")


# ---------------------------------------------------------------- M5: an output that is the input

def test_eval_and_export_refuse_to_write_over_their_checkpoint(checkpoint, tmp_path, capsys):
    before = checkpoint.read_bytes()
    symlink = tmp_path / "link.pt"
    symlink.symlink_to(checkpoint)
    hardlink = tmp_path / "hard.pt"
    os.link(checkpoint, hardlink)
    for output in (checkpoint, tmp_path / "." / "best.pt", symlink, hardlink):
        assert main(["eval", "--checkpoint", str(checkpoint), "--output", str(output)]) == 2
        err = capsys.readouterr().err
        assert f"the output {output}" in err and f"is the input {checkpoint} itself" in err
        assert "pass another --output" in err
        assert main(["export", "--checkpoint", str(checkpoint), "--output", str(output)]) == 2
        assert "is the input" in capsys.readouterr().err
    # A checkpoint named *.onnx: export's default output (the checkpoint path with .onnx) is the checkpoint.
    named_onnx = tmp_path / "model.onnx"
    named_onnx.write_bytes(before)
    assert main(["export", "--checkpoint", str(named_onnx)]) == 2
    assert "(the default: the checkpoint path with .onnx) is the input" in capsys.readouterr().err
    assert checkpoint.read_bytes() == before and named_onnx.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pt", "hard.pt", "link.pt", "model.onnx"]


# ---------------------------------------------------------------- L1: out of memory

def test_scoring_out_of_memory_names_the_batch_and_image_size():
    class Exhausting(torch.nn.Module):
        def forward(self, x):
            raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: can't allocate memory: "
                               "you tried to allocate 412316860416 bytes. Error code 12 (Cannot allocate memory)")

    data = torch.utils.data.TensorDataset(torch.zeros(8, 3, 40, 40), torch.zeros(8, 2))
    model = Exhausting().train()
    with pytest.raises(OutOfMemoryError, match=r"scoring on cpu ran out of memory \(RuntimeError: .*DefaultCPU"
                                               r"Allocator.*\) with batches of 4 images of 40x40 px; pass a smaller "
                                               r"--batch-size \(now 4\), or a smaller --img-size \(now 40\)"):
        predict(model, eval_loader(data, 4, 0, torch.device("cpu")), torch.device("cpu"), ModelInput())
    assert model.training  # the mode is restored on failure too


@pytest.mark.parametrize("error", [torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 48.00 GiB"),
                                   MemoryError()])
def test_out_of_memory_is_a_message_with_the_sizes_not_a_traceback(checkpoint, tmp_path, monkeypatch, capsys, error):
    def exhausted(*args, **kwargs):
        raise error

    monkeypatch.setattr(mlkd, "evaluate", exhausted)
    assert main(["eval", "--checkpoint", str(checkpoint), "--img-size", "4096"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mlkd eval: error: mlkd eval ran out of memory")
    assert "images of 4096 px in batches of 64; pass a smaller --batch-size (now 64) or --img-size (now 4096 px)" in err
    monkeypatch.setattr(mlkd, "train", exhausted)
    assert main(["train", "--model", "tiny_cnn", "--img-size", "512", "--batch-size", "32",
                 "--output", str(tmp_path / "run")]) == 2
    assert "images of 512 px in batches of 32; pass a smaller --batch-size (now 32) or --img-size (now 512)" \
        in capsys.readouterr().err
    # Any other RuntimeError is not dressed up as one.
    monkeypatch.setattr(mlkd, "evaluate", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("a bug")))
    with pytest.raises(RuntimeError, match="a bug"):
        main(["eval", "--checkpoint", str(checkpoint)])


# ---------------------------------------------------------------- L4: closed pipe, write failures

def test_a_closed_pipe_ends_quietly_with_status_141():
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before mlkd writes a byte, like `mlkd list | head -0`
    try:
        done = subprocess.run([sys.executable, "-m", "mlkd", "list"], stdout=write_end, stderr=subprocess.PIPE,
                              text=True, timeout=120)
    finally:
        os.close(write_end)
    assert done.returncode == 141
    assert done.stderr == ""


@pytest.mark.parametrize("code,says", [
    (errno.ENOSPC, "the disk is full: free space on the file system of"),
    (errno.EDQUOT, "your disk quota on the file system of .* is used up"),
    (errno.EFBIG, "the file reached the largest size allowed.*raise the limit with `ulimit -f`"),
])
def test_write_failures_name_their_cause(tmp_path, code, says):
    def fail(f):
        f.write(b"partial")
        raise OSError(code, os.strerror(code))

    target = tmp_path / "last.pt"
    with pytest.raises(OSError, match=rf"could not write {target} \({os.strerror(code)}\); {says}") as raised:
        atomic_write(target, fail)
    assert raised.value.errno == code
    assert list(tmp_path.iterdir()) == []


def test_a_file_size_limit_is_not_reported_as_a_full_disk(tmp_path):
    """torch's zip writer reports a write cut short by `ulimit -f` without an error code (a real limit here)."""
    script = textwrap.dedent(f"""
        import resource, torch
        from mlkd.engine.checkpoint import save_checkpoint
        resource.setrlimit(resource.RLIMIT_FSIZE, (20000, resource.RLIM_INFINITY))
        try:
            save_checkpoint({{"model": {{"w": torch.zeros(100000)}}, "model_args": {{}}}},
                            {str(tmp_path / "last.pt")!r})
        except OSError as err:
            print(err)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert f"could not write {tmp_path / 'last.pt'} (File too large); the file reached the largest size allowed " \
           "(20000 bytes, `ulimit -f`)" in done.stdout, done.stdout + done.stderr
    assert "disk is full" not in done.stdout
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- L4: resuming from a run folder

def test_train_on_a_distill_run_names_the_distill_command(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump({"method": "kd", "teacher": "t.pt", "output": str(run)}))
    assert main(["train", "--output", str(run), "--resume"]) == 2
    err = capsys.readouterr().err
    assert f"{run} holds a distill run (method kd): resume it with `mlkd distill --output {run} --resume`" in err
    assert "distill()" not in err
    assert main(["train", "--config", str(run / "config.yaml"), "--output", str(tmp_path / "new")]) == 2
    assert "use `mlkd distill` with them, or set method: vanilla" in capsys.readouterr().err


def test_resume_reads_the_settings_from_last_pt_when_config_yaml_is_gone(tmp_path, capsys, caplog):
    data = write_fashion_like(tmp_path / "data", n_train=64, n_test=32)
    run = tmp_path / "run"
    flags = ["--dataset", "fashion_mosaic", "--data-root", str(data), "--dataset-option", "num_mosaics=64",
             "--img-size", "32", "--batch-size", "16", "--epochs", "1", "--lr", "1e-2", "--model", "tiny_cnn",
             "--model-option", "embed_dim=16", "--model-option", "num_heads=2", "--model-option", "ffn_dim=16",
             "--no-augment", "--device", "cpu", "--threads", "1", "--quiet", "--output", str(run)]
    assert main(["train", *flags]) == 0
    want = load_checkpoint(run / "last.pt")["model"]
    (run / "config.yaml").unlink()
    capsys.readouterr()
    with caplog.at_level("INFO", logger="mlkd"):
        assert main(["train", "--output", str(run), "--resume"]) == 0, capsys.readouterr().err
    assert f"{run / 'config.yaml'} is missing; reading the run's settings from {run / 'last.pt'}" in caplog.text
    got = load_checkpoint(run / "last.pt")["model"]
    assert all(torch.equal(got[k], want[k]) for k in want)
    # A last.pt that records no settings: the message says what to pass.
    state = load_checkpoint(run / "last.pt")
    del state["config"]
    save_checkpoint(state, run / "last.pt")
    assert main(["train", "--output", str(run), "--resume"]) == 2
    assert "records no run settings ('config'); pass the run's settings with --config FILE.yaml" \
        in capsys.readouterr().err
