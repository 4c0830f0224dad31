"""Output folders of train, bench and demo (docs/guarantees.md, "Output folders"): no link is followed out
of a folder, bench takes its folder like a run does, every setting of a comparison is checked before the
first run trains, an empty --output is refused, and method labels make distinct, usable folder names."""
from __future__ import annotations

import os
import re

import pytest

import mlkd.bench as bench
import mlkd.demo as demo
from mlkd.cli import main
from mlkd.config import make_config
from mlkd.engine.run_folder import LOCK_NAME, OutputInUseError, RunFolder
from synthetic import write_fashion_like


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_fashion_like(tmp_path_factory.mktemp("folders_data"), n_train=160, n_test=60)


def flags(data, output, epochs=1):
    return ["--dataset", "fashion_mosaic", "--data-root", str(data), "--dataset-option", "num_mosaics=96",
            "--img-size", "32", "--batch-size", "16", "--epochs", str(epochs), "--lr", "1e-2", "--model", "tiny_cnn",
            "--model-option", "embed_dim=16", "--model-option", "num_heads=2", "--model-option", "ffn_dim=16",
            "--no-augment", "--device", "cpu", "--threads", "1", "--quiet", "--output", str(output)]


def student(data, **overrides):
    values = dict(dataset="fashion_mosaic", data_root=str(data), dataset_options={"num_mosaics": 96}, img_size=32,
                  batch_size=16, epochs=1, lr=1e-2, model="tiny_cnn", augment=False, device="cpu", quiet=True,
                  tensorboard=False, threads=1, model_options={"embed_dim": 16, "num_heads": 2, "ffn_dim": 16})
    return make_config({**values, **overrides})


class Trained(Exception):
    """Raised by `no_training`'s fit: a run was about to train."""


@pytest.fixture
def no_training(monkeypatch):
    """Replace the fit of bench and demo by one that records its run and stops there."""
    calls = []

    def fit(cfg):
        calls.append(cfg.output)
        raise Trained(cfg.output)

    monkeypatch.setattr(bench, "fit", fit)
    monkeypatch.setattr(demo, "fit", fit)
    return calls


@pytest.fixture
def teacher_file(tmp_path):
    """A stand-in for a teacher checkpoint: the runs never start, so only its existence is checked."""
    path = tmp_path / "teacher.pt"
    path.write_bytes(b"not read")
    return path


# ---------------------------------------------------------------- H2: links are never followed

def test_a_linked_lock_is_refused_and_its_target_unchanged(data, tmp_path, capsys):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    out = tmp_path / "run"
    out.mkdir()
    (out / LOCK_NAME).symlink_to(victim)
    assert main(["train", *flags(data, out)]) == 2
    err = capsys.readouterr().err
    assert f"{out / LOCK_NAME} is a symbolic link (to {victim})" in err and "remove the link" in err
    assert victim.read_text() == "precious"
    assert sorted(p.name for p in out.iterdir()) == [LOCK_NAME]


def test_a_dangling_lock_link_creates_nothing_outside(data, tmp_path, capsys):
    outside = tmp_path / "outside"
    outside.mkdir()
    out = tmp_path / "run"
    out.mkdir()
    (out / LOCK_NAME).symlink_to(outside / "created")
    assert main(["train", *flags(data, out)]) == 2
    assert "is a symbolic link" in capsys.readouterr().err
    assert list(outside.iterdir()) == []


def test_a_linked_tensorboard_folder_is_refused(data, tmp_path, capsys):
    # With mlkd's lock beside it, the folder looks like a run that stopped before its first epoch.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    out = tmp_path / "run"
    out.mkdir()
    (out / LOCK_NAME).touch()
    (out / "tensorboard").symlink_to(elsewhere, target_is_directory=True)
    assert main(["train", *flags(data, out)]) == 2  # tensorboard: on by default
    assert f"{out / 'tensorboard'} is a symbolic link" in capsys.readouterr().err
    assert list(elsewhere.iterdir()) == []
    assert not (out / "config.yaml").exists()


@pytest.mark.parametrize("name", ["last.pt", "config.yaml", ".metrics.json.0a1b2c3d.tmp", "comparison.md"])
def test_every_own_name_that_is_a_link_is_refused(tmp_path, name):
    target = tmp_path / "target"
    target.write_text("x")
    out = tmp_path / "run"
    out.mkdir()
    (out / name).symlink_to(target)
    own = bench.BENCH_FILES if name == "comparison.md" else RunFolder(out).own_names
    with pytest.raises(FileExistsError, match="is a symbolic link"):
        RunFolder(out, own).open()
    assert target.read_text() == "x" and not (out / LOCK_NAME).exists()


def test_a_lock_that_is_not_a_plain_file_is_named(tmp_path):
    out = tmp_path / "run"
    (out / LOCK_NAME).mkdir(parents=True)
    with pytest.raises(FileExistsError, match=f"{out / LOCK_NAME} is not a plain file"):
        RunFolder(out).open()


def test_an_output_folder_that_is_itself_a_link_is_used(tmp_path):
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "link").symlink_to(real, target_is_directory=True)
    with RunFolder(tmp_path / "link"):
        assert (real / LOCK_NAME).is_file()
    with RunFolder(tmp_path / "link") as folder:
        assert folder.used_before


# ---------------------------------------------------------------- H3: bench takes its folder like a run

def test_bench_refuses_a_folder_with_a_users_comparison(data, tmp_path, teacher_file, no_training, capsys):
    out = tmp_path / "bench"
    out.mkdir()
    (out / "comparison.md").write_text("my own notes")
    assert main(["bench", "--teacher", str(teacher_file), "--methods", "vanilla", "--seeds", "0",
                 *flags(data, out)]) == 2
    assert "not an mlkd comparison (comparison.md)" in capsys.readouterr().err
    assert (out / "comparison.md").read_text() == "my own notes"
    assert [p.name for p in out.iterdir()] == ["comparison.md"]  # its lock removed again
    assert no_training == []


def test_two_benches_into_one_folder_at_once_the_second_is_refused(data, tmp_path, monkeypatch):
    out = tmp_path / "bench"
    second = []

    def fit(cfg):  # the first bench's first run: another bench starts into the same folder meanwhile
        with pytest.raises(OutputInUseError, match="another mlkd process"):
            bench.compare("unused.pt", ["vanilla"], [1], config=student(data), output=out)
        second.append("refused")
        raise Trained(cfg.output)

    monkeypatch.setattr(bench, "fit", fit)
    with pytest.raises(Trained):
        bench.compare("unused.pt", ["vanilla"], [0], config=student(data), output=out)
    assert second == ["refused"]
    assert not out.exists()  # no run started: the first bench leaves nothing behind


def test_a_bench_continues_in_its_own_folder_and_in_one_of_an_older_version(data, tmp_path, monkeypatch):
    out = tmp_path / "bench"
    first = bench.compare("unused.pt", ["vanilla"], [0], config=student(data), output=out)
    assert (out / LOCK_NAME).is_file() and (out / "comparison.md").is_file()
    real_fit, resumed = bench.fit, []
    monkeypatch.setattr(bench, "fit", lambda cfg: resumed.append(cfg.resume) or real_fit(cfg))
    again = bench.compare("unused.pt", ["vanilla"], [0], config=student(data), output=out)
    assert resumed == [True] and again["methods"] == first["methods"]  # the finished run is reused
    # A comparison written before benches took their folder has no lock: its run folders show it is mlkd's.
    (out / LOCK_NAME).unlink()
    assert bench.compare("unused.pt", ["vanilla"], [0], config=student(data), output=out)["methods"] \
        == first["methods"]
    (out / "vanilla" / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match=r"not an mlkd comparison \(vanilla\)"):
        bench.compare("unused.pt", ["vanilla"], [0], config=student(data), output=out)


# ---------------------------------------------------------------- M3: every setting checked before a run trains

def test_a_bad_seed_is_refused_before_any_run_trains(data, tmp_path, teacher_file, no_training, capsys):
    out = tmp_path / "bench"
    assert main(["bench", "--teacher", str(teacher_file), "--methods", "vanilla", "--seeds", "0,-1",
                 *flags(data, out)]) == 2
    assert "seed must be in [0, 2**32), got -1" in capsys.readouterr().err
    assert no_training == [] and not out.exists()


def test_a_weight_one_method_lacks_is_refused_before_any_run_trains(data, tmp_path, teacher_file, no_training,
                                                                     capsys):
    out = tmp_path / "bench"
    assert main(["bench", "--teacher", str(teacher_file), "--methods", "l2d,kd", "--lambda", "cd=50",
                 "--seeds", "0", *flags(data, out)]) == 2
    err = capsys.readouterr().err
    assert "bench method 'kd': --lambda cd=...: method 'kd' has no weight 'cd'" in err
    assert no_training == [] and not out.exists()


def test_a_missing_teacher_is_refused_before_vanilla_trains(data, tmp_path, no_training, capsys):
    out = tmp_path / "bench"
    assert main(["bench", "--teacher", str(tmp_path / "none.pt"), "--methods", "vanilla,kd", "--seeds", "0",
                 *flags(data, out)]) == 2
    assert f"--teacher {tmp_path / 'none.pt'} does not exist" in capsys.readouterr().err
    assert no_training == [] and not out.exists()


def test_demo_refuses_repeated_seeds_before_the_teacher_trains(tmp_path, no_training, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--seeds", "0,0", "--output", str(out)]) == 2
    assert "seeds must be distinct" in capsys.readouterr().err
    assert no_training == [] and not out.exists()


# ---------------------------------------------------------------- L5: an empty --output

def test_an_empty_output_is_refused(data, tmp_path, teacher_file, no_training, monkeypatch, capsys):
    here = tmp_path / "cwd"
    here.mkdir()
    monkeypatch.chdir(here)
    assert main(["train", *flags(data, "")]) == 2
    assert "output is empty ('')" in capsys.readouterr().err
    assert main(["bench", "--teacher", str(teacher_file), "--methods", "vanilla", "--seeds", "0",
                 *flags(data, "")]) == 2
    assert "the output folder is empty ('')" in capsys.readouterr().err
    assert main(["demo", "--quick", "--output", ""]) == 2
    assert "the output folder is empty ('')" in capsys.readouterr().err
    with pytest.raises(ValueError, match="empty"):
        RunFolder("")
    assert os.listdir(here) == [] and no_training == []


# ---------------------------------------------------------------- L7: labels as folder names

def test_labels_that_share_a_folder_are_refused_naming_both(data, tmp_path, no_training):
    out = tmp_path / "bench"
    for a, b in (("kd T4", "kd_T4"), ("KD", "kd")):  # "KD" and "kd" share a folder on macOS and Windows
        with pytest.raises(ValueError, match=f"method labels '{a}' and '{b}' would share the run folder"):
            bench.compare("unused.pt", [(a, "vanilla", {}), (b, "vanilla", {})], [0], config=student(data),
                          output=out)
    assert no_training == [] and not out.exists()


@pytest.mark.parametrize("label", ["..", ".", "", "***", ".hidden", "comparison.json"])
def test_labels_without_a_usable_folder_name_are_refused(data, tmp_path, no_training, label):
    out = tmp_path / "bench"
    with pytest.raises(ValueError, match=re.escape(f"method label '{label}' gives no usable folder name")):
        bench.compare("unused.pt", [(label, "vanilla", {})], [0], config=student(data), output=out)
    assert no_training == [] and not out.exists() and sorted(os.listdir(tmp_path)) == []
