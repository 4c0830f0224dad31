"""Teachers trained outside mlkd (issue 22): a timm classifier from its state dict, any nn.Module, and an mlkd
checkpoint on other classes; classes mapped by name; data-set labels the teacher lacks excluded from the
distillation terms; every broken teacher refused before training, naming the file and the fix.

The timm teacher is trained here with a plain PyTorch loop (not with mlkd) on a tiny csv set whose four
classes it knows in another order, among six.
"""
from __future__ import annotations

import json

import pytest
import timm
import torch
import torch.nn.functional as F
import yaml
from torch import nn

import mlkd
from mlkd.cli import main
from mlkd.config import make_config
from mlkd.data import build_transforms, create_dataset
from mlkd.engine.checkpoint import save_checkpoint
from mlkd.engine.teacher import build_external_teacher, load_teacher, resolve_teacher_input, term_sources
from mlkd.engine.trainer import TrainStep, distill_taught_labels
from mlkd.losses import create_distiller, list_distillers
from mlkd.models import create_model
from mlkd.models.external import ExternalTeacher, map_classes, read_class_names
from mlkd.outputs import ModelOutput
from reference_losses import cd_ref, id_ref, kd_ref, mld_ref
from synthetic import write_csv_quadrants
from tiny_runs import HEAD

DATA_CLASSES = ["cat", "dog", "bird", "fish"]
# A reordered superset of the data set's classes, as a teacher trained elsewhere would have them.
TEACHER_CLASSES = ["fish", "zebra", "dog", "cat", "lion", "bird"]
ARCH = "test_resnet"  # timm's 0.37 M-parameter test network: builds offline, trains in seconds at 32 px


@pytest.fixture(scope="module")
def csv_root(tmp_path_factory):
    return write_csv_quadrants(tmp_path_factory.mktemp("quadrants"), DATA_CLASSES)


def train_timm_teacher(root, classes: list[str]) -> nn.Module:
    """A timm classifier trained with a plain PyTorch loop (no mlkd) on the csv set, one output per name of
    ``classes`` (names the data set lacks are never positive), at 32 px with mean 0.5 and std 0.5."""
    data = create_dataset("csv", root, "train", transform=build_transforms(32, train=False))
    column = [classes.index(c) for c in data.classes]
    torch.manual_seed(0)
    model = timm.create_model(ARCH, num_classes=len(classes), pretrained=False)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(2):
        for images, targets in torch.utils.data.DataLoader(data, batch_size=8, shuffle=True):
            wide = torch.zeros(len(targets), len(classes))
            wide[:, column] = targets
            loss = F.binary_cross_entropy_with_logits(model((images - 0.5) / 0.5), wide)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return model.eval()


@pytest.fixture(scope="module")
def teacher_files(csv_root, tmp_path_factory):
    """The teacher's state dict and its class list, as someone who trained it elsewhere would have them."""
    folder = tmp_path_factory.mktemp("teacher")
    model = train_timm_teacher(csv_root, TEACHER_CLASSES)
    torch.save(model.state_dict(), folder / "teacher.pth")
    (folder / "classes.txt").write_text("\n".join(TEACHER_CLASSES) + "\n")
    return folder / "teacher.pth", folder / "classes.txt"


def run_flags(root, output, *extra: str) -> list[str]:
    """`mlkd distill` on the csv set: a tiny_cnn student at 32 px, one epoch of batches of 8."""
    options = [flag for key, value in HEAD.items() for flag in ("--model-option", f"{key}={value}")]
    return ["distill", "--dataset", "csv", "--data-root", str(root), "--img-size", "32", "--batch-size", "8",
            "--epochs", "1", "--lr", "1e-2", "--model", "tiny_cnn", *options, "--no-augment", "--device", "cpu",
            "--threads", "1", "--quiet", "--output", str(output), *extra]


def api_args(root, output, **overrides):
    values = dict(dataset="csv", data_root=str(root), img_size=32, batch_size=8, epochs=1, lr=1e-2, model="tiny_cnn",
                  model_options=dict(HEAD), augment=False, device="cpu", threads=1, quiet=True, output=str(output),
                  tensorboard=False)
    values.update(overrides)
    return values


# ---------------------------------------------------------------- (a) from the CLI and the API

def test_cli_distils_from_a_timm_teacher_trained_elsewhere(csv_root, teacher_files, tmp_path):
    weights, classes = teacher_files
    out = tmp_path / "run"
    assert main(run_flags(csv_root, out, "--method", "kd", "--teacher-model", ARCH, "--teacher-weights", str(weights),
                          "--teacher-classes", str(classes), "--teacher-img-size", "32")) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0.0 <= metrics["mAP"] <= 1.0
    teacher = metrics["teacher"]
    assert teacher["kind"] == "timm" and teacher["classes"]["used"] == 4 and teacher["classes"]["unused"] == 2
    assert teacher["term_sources"] == {"kd": "logits of the teacher as given"}
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["teacher"] is None and config["teacher_model"] == ARCH
    assert config["teacher_weights"] == str(weights) and config["teacher_classes"] == str(classes)
    # Resolution given; normalisation not given: taken from timm's pretrained_cfg, and recorded so.
    assert config["teacher_img_size"] == 32 and config["teacher_mean"] == [0.5] * 3
    assert config["teacher_input_source"] == {"img_size": "given",
                                              "mean_std": "timm's pretrained_cfg of test_resnet.r160_in1k"}


def test_api_distils_from_a_module_and_resumes_only_with_it(csv_root, tmp_path):
    module = train_timm_teacher(csv_root, TEACHER_CLASSES)
    out = tmp_path / "api"
    settings = dict(teacher_classes=TEACHER_CLASSES, teacher_img_size=32, teacher_mean=[0.5] * 3,
                    teacher_std=[0.5] * 3)
    result = mlkd.distill(teacher=module, method="kd", **api_args(csv_root, out), **settings)
    assert (out / "metrics.json").is_file() and 0.0 <= result.metrics["mAP"] <= 1.0
    assert result.metrics["teacher"]["kind"] == "module"
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["teacher_module"] == "timm.models.resnet.ResNet" and config["teacher"] is None
    assert config["teacher_classes"] == TEACHER_CLASSES
    # config.yaml cannot hold the module: resuming without it says how; with it, the run continues.
    with pytest.raises(ValueError, match=r"teacher module \(timm.models.resnet.ResNet\).*pass it again"):
        mlkd.distill(config=out / "config.yaml", resume=True)
    again = mlkd.distill(teacher=module, config=out / "config.yaml", resume=True)
    assert again.metrics["mAP"] == result.metrics["mAP"]


def test_l2d_from_a_timm_teacher_uses_a_fitted_head_from_the_cli_and_the_api(tmp_path):
    """The issue's target: full L2D from a classifier without label-wise head (the head fitted once per teacher)."""
    pytest.importorskip("mlkd.models.fitted_head")
    root = write_csv_quadrants(tmp_path / "data", DATA_CLASSES, n_train=160, n_val=16, n_test=16)
    module = train_timm_teacher(root, TEACHER_CLASSES)
    torch.save(module.state_dict(), tmp_path / "teacher.pth")
    (tmp_path / "classes.txt").write_text("\n".join(TEACHER_CLASSES) + "\n")
    runs = tmp_path / "runs"
    assert main(run_flags(root, runs / "cli", "--method", "l2d", "--teacher-model", ARCH, "--teacher-weights",
                          str(tmp_path / "teacher.pth"), "--teacher-classes", str(tmp_path / "classes.txt"),
                          "--teacher-img-size", "32")) == 0
    teacher = json.loads((runs / "cli" / "metrics.json").read_text())["teacher"]
    assert teacher["term_sources"]["mld"] == "logits of the teacher as given"
    assert teacher["term_sources"]["cd"].startswith("label-wise embeddings of the fitted head (cached in "
                                                    f"{runs / 'fitted_heads'}")
    assert teacher["fitted_head"]["reused"] is False and len(list((runs / "fitted_heads").iterdir())) == 1
    result = mlkd.distill(teacher=module, method="l2d", **api_args(root, runs / "api"), teacher_classes=TEACHER_CLASSES,
                          teacher_img_size=32, teacher_mean=[0.5] * 3, teacher_std=[0.5] * 3)
    assert (runs / "api" / "metrics.json").is_file() and 0.0 <= result.metrics["mAP"] <= 1.0
    assert result.metrics["teacher"]["term_sources"]["id"].startswith("label-wise embeddings of the fitted head")


def test_a_module_without_its_input_settings_is_refused(csv_root, tmp_path):
    module = timm.create_model(ARCH, num_classes=4)
    with pytest.raises(ValueError, match=r"normalisation is unknown and mlkd does not guess it.*teacher_same_input"):
        mlkd.distill(teacher=module, method="kd", **api_args(csv_root, tmp_path / "run"), teacher_img_size=32)
    assert not (tmp_path / "run").exists()


def test_teacher_input_sources_are_recorded_and_stable():
    base = dict(method="kd", teacher_model=ARCH, teacher_weights="t.pth", img_size=48)
    cfg = resolve_teacher_input(make_config(**base))
    assert cfg.teacher_img_size == 160 and cfg.teacher_mean == [0.5] * 3
    assert cfg.teacher_input_source == {"img_size": "timm's pretrained_cfg of test_resnet.r160_in1k",
                                        "mean_std": "timm's pretrained_cfg of test_resnet.r160_in1k"}
    assert resolve_teacher_input(cfg) == cfg  # a resumed run compares equal
    same = resolve_teacher_input(make_config(**base, teacher_same_input=True))
    assert (same.teacher_img_size, same.teacher_mean, same.teacher_std) == (48, [0.0] * 3, [1.0] * 3)
    assert same.teacher_input_source["mean_std"] == "the run's images (teacher_same_input): no normalisation"
    given = resolve_teacher_input(make_config(**base, teacher_img_size=64, teacher_mean=[0.4] * 3, teacher_std=[0.2] * 3))
    assert given.teacher_input_source == {"img_size": "given", "mean_std": "given"}


# ---------------------------------------------------------------- (b) classes by name, checked by value

def test_timm_teacher_on_a_reordered_superset_maps_by_name():
    torch.manual_seed(0)
    model = timm.create_model(ARCH, num_classes=len(TEACHER_CLASSES)).eval()
    teacher = ExternalTeacher(model, TEACHER_CLASSES, DATA_CLASSES)
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        raw, out = model(x), teacher(x)
        final = model.forward_features(x)
    assert out.logits.shape == (3, 4) and out.label_embeddings is None
    for j, name in enumerate(DATA_CLASSES):
        torch.testing.assert_close(out.logits[:, j], raw[:, TEACHER_CLASSES.index(name)], rtol=0, atol=1e-6)
    # Stage maps shallow to deep, ending with the final map the classifier reads (what a fitted head reads).
    assert [f.shape[1] for f in out.features] == teacher.feature_channels
    assert torch.equal(out.features[-1], final) and teacher.final_channels == final.shape[1]
    assert torch.equal(teacher.final_map(x), final)


def test_the_runs_teacher_maps_its_trained_weights_by_name(csv_root, teacher_files):
    weights, classes = teacher_files
    cfg = make_config(method="kd", teacher_model=ARCH, teacher_weights=str(weights), teacher_classes=str(classes))
    teacher = build_external_teacher(cfg, DATA_CLASSES)  # what pre-flight builds and the run uses
    plain = timm.create_model(ARCH, num_classes=6)
    plain.load_state_dict(torch.load(weights, weights_only=True))
    x = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        raw, logits = plain.eval()(x), teacher(x).logits
    assert torch.equal(logits, raw[:, [3, 2, 5, 0]])  # cat, dog, bird, fish in the teacher's order


def test_a_module_output_dict_is_mapped_embeddings_included():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 6, 3)

        def forward(self, x):
            f = self.conv(x)
            return {"logits": f.mean(dim=(2, 3)), "label_embeddings": f.flatten(2)[:, :, :5], "features": [f]}

    net = Net()
    teacher = ExternalTeacher(net, TEACHER_CLASSES, DATA_CLASSES)
    x = torch.rand(2, 3, 16, 16)
    raw, out = net(x), teacher(x)
    index = [TEACHER_CLASSES.index(c) for c in DATA_CLASSES]
    assert torch.equal(out.logits, raw["logits"][:, index])
    assert torch.equal(out.label_embeddings, raw["label_embeddings"][:, index])
    assert torch.equal(out.features[0], raw["features"][0]) and teacher.final_channels == 6
    # A bare logits tensor works too; a wrong class count is named.
    plain = ExternalTeacher(nn.Sequential(nn.Flatten(), nn.LazyLinear(6)), TEACHER_CLASSES, DATA_CLASSES)
    assert plain(x).logits.shape == (2, 4) and plain(x).features == []
    wrong = ExternalTeacher(nn.Sequential(nn.Flatten(), nn.LazyLinear(5)), TEACHER_CLASSES, DATA_CLASSES)
    with pytest.raises(ValueError, match=r"shape \(2, 5\), but its class list .* has 6 names"):
        wrong(x)


def test_an_mlkd_checkpoint_on_other_classes_is_mapped_by_name(tmp_path):
    torch.manual_seed(0)
    model = create_model("tiny_cnn", 3, **HEAD).eval()
    path = save_checkpoint({"model": model.state_dict(), "model_args": model.model_args, "classes": ["c", "a", "b"],
                            "config": {"img_size": 32}}, tmp_path / "t.pt")
    teacher, _ = load_teacher(str(path), ["a", "b", "c"], torch.device("cpu"), channels_last=False)
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        raw, out = model(x), teacher(x)
    assert torch.equal(out.logits, raw.logits[:, [1, 2, 0]])
    assert torch.equal(out.label_embeddings, raw.label_embeddings[:, [1, 2, 0]])
    with pytest.raises(ValueError, match=r"no output for 1 of the data set's 3 classes: 'd'.*--teacher-missing-labels "
                                         r"exclude"):
        load_teacher(str(path), ["a", "b", "d"], torch.device("cpu"))


def test_class_lists_read_and_map():
    assert map_classes(TEACHER_CLASSES, DATA_CLASSES).teacher_columns == [3, 2, 5, 0]
    excluded = map_classes(["dog", "cat"], DATA_CLASSES, "exclude")
    assert (excluded.data_columns, excluded.teacher_columns, excluded.missing) == ([0, 1], [1, 0], ["bird", "fish"])
    with pytest.raises(ValueError, match="none of which the data set has"):
        map_classes(["Cat", "Dog"], DATA_CLASSES, "exclude")


def test_class_file_whitespace_blank_lines_and_duplicates(tmp_path):
    path = tmp_path / "classes.txt"
    path.write_text("\ufeffcat \n\n  dog\n\t\nbird\n")
    assert read_class_names(path) == ["cat", "dog", "bird"]
    path.write_text("cat\ndog\ncat\n")
    with pytest.raises(ValueError, match=r"classes.txt:3: 'cat' is listed twice \(first on line 1\)"):
        read_class_names(path)
    path.write_text("\n \n")
    with pytest.raises(ValueError, match="holds no class name"):
        read_class_names(path)


# ---------------------------------------------------------------- (c) errors, before any training

def broken_files(folder, weights):
    """A file of each kind that is not the teacher's state dict."""
    model = timm.create_model(ARCH, num_classes=6)
    torch.save(model, folder / "pickled.pth")  # the whole pickled model
    (folder / "notes.pth").write_text("these are not weights\n")
    data = weights.read_bytes()
    (folder / "cut.pth").write_bytes(data[: len(data) // 2])  # corrupt: cut short
    return [folder / "pickled.pth", folder / "notes.pth", folder / "cut.pth"]


def test_broken_teachers_are_refused_before_training(csv_root, teacher_files, tmp_path, capsys):
    weights, classes = teacher_files
    missing_fish = tmp_path / "no_fish.txt"
    missing_fish.write_text("fish_x\nzebra\ndog\ncat\nlion\nbird\n")  # six outputs, none named 'fish'
    cases = [(["--teacher-weights", str(path), "--teacher-classes", str(classes)],
              [f"--teacher-weights {path} is not a state dict", "torch.save(model.state_dict()"])
             for path in broken_files(tmp_path, weights)]
    cases += [
        # Keys of another architecture.
        (["--teacher-weights", str(weights), "--teacher-classes", str(classes), "--teacher-model", "test_efficientnet"],
         [f"--teacher-weights {weights} does not fit the timm model 'test_efficientnet'", "missing in the file",
          "not in the model", "Pass the --teacher-model the weights were trained with"]),
        # No class list: the data set's 4 classes, but the classifier has 6 outputs.
        (["--teacher-weights", str(weights)],
         ["has 6 outputs, but the teacher's class list (the data set's 4 classes", "--teacher-classes with the 6"]),
        # A data-set class the teacher lacks.
        (["--teacher-weights", str(weights), "--teacher-classes", str(missing_fish)],
         ["no output for 1 of the data set's 4 classes: 'fish'", "--teacher-missing-labels exclude"]),
        (["--teacher-weights", str(weights), "--teacher-classes", str(tmp_path / "nope.txt")],
         [f"--teacher-classes {tmp_path / 'nope.txt'} does not exist"]),
        (["--teacher-weights", str(tmp_path / "nope.pth")], [f"--teacher-weights {tmp_path / 'nope.pth'} does not exist"]),
        (["--teacher-weights", str(weights), "--teacher-model", "resnet5O"],
         ["--teacher-model 'resnet5O' is not a timm model. Did you mean", "resnet50"]),
        (["--teacher-weights", str(weights), "--teacher", str(weights)], ["are exclusive: pass one of them"]),
        ([], [f"--teacher-model {ARCH} needs --teacher-weights FILE"]),
    ]
    for extra, wanted in cases:
        out = tmp_path / "run"
        flags = ["--method", "kd", "--teacher-img-size", "32", *extra]
        if "--teacher-model" not in extra:
            flags += ["--teacher-model", ARCH]
        assert main(run_flags(csv_root, out, *flags)) == 2, extra
        err = capsys.readouterr().err
        for text in wanted:
            assert text in err, (extra, err)
        assert not out.exists(), extra  # refused before the run folder was made


def test_weights_inside_a_checkpoint_dict_and_with_a_prefix_load(teacher_files, tmp_path):
    weights, classes = teacher_files
    state = torch.load(weights, weights_only=True)
    torch.save({"epoch": 3, "state_dict": {f"model.{k}": v for k, v in state.items()}}, tmp_path / "model_best.pth.tar")
    cfg = make_config(method="kd", teacher_model=ARCH, teacher_weights=str(tmp_path / "model_best.pth.tar"),
                      teacher_classes=str(classes))
    teacher = build_external_teacher(cfg, DATA_CLASSES)
    assert torch.equal(teacher.model.fc.weight, state["fc.weight"])


def test_teacher_options_that_do_not_apply_are_refused():
    with pytest.raises(ValueError, match="apply to a teacher trained elsewhere.*--teacher t.pt records its own"):
        make_config(method="kd", teacher="t.pt", teacher_img_size=64)
    with pytest.raises(ValueError, match="--teacher-weights w.pth needs --teacher-model NAME"):
        make_config(method="kd", teacher_weights="w.pth")
    with pytest.raises(ValueError, match="teacher_mean is given without teacher_std"):
        make_config(method="kd", teacher_model=ARCH, teacher_weights="w.pth", teacher_mean=[0.5] * 3)
    with pytest.raises(ValueError, match="teacher_missing_labels .* must be one of 'error', 'exclude'"):
        make_config(teacher_missing_labels="drop")
    with pytest.raises(ValueError, match="teacher_classes names 'a' more than once"):
        make_config(teacher_classes=["a", "b", "a"])


# ---------------------------------------------------------------- (d) labels the teacher lacks

@pytest.mark.parametrize("method", ["kd", "mld", "l2d_paper"])
def test_the_distillation_terms_see_only_the_taught_labels(method):
    torch.manual_seed(0)
    n, taught = 6, [0, 2, 3]  # the teacher lacks data-set label 1
    student = ModelOutput(torch.randn(n, 4, requires_grad=True), torch.randn(n, 4, 8, requires_grad=True), [])
    teacher = ModelOutput(torch.randn(n, 3), torch.randn(n, 3, 5), [])
    targets = (torch.rand(n, 4) < 0.6).float()
    targets[:, 0] = 1  # enough positives for CD and ID groups
    distiller = create_distiller(method)
    out = distill_taught_labels(distiller, student, teacher, targets, torch.tensor(taught))
    # By hand, from the reference losses: BCE over all four labels; distillation over the taught three.
    zs, es, y = student.logits[:, taught], student.label_embeddings[:, taught], targets[:, taught]
    bce = F.binary_cross_entropy_with_logits(student.logits, targets, reduction="sum")
    if method == "kd":
        wanted = {"kd": 192 * kd_ref(zs, teacher.logits, 1.0)}  # KD's defaults: λ 192, τ 1
    elif method == "mld":
        wanted = {"mld": 10 * mld_ref(zs, teacher.logits)}
    else:
        wanted = {"mld": 10 * mld_ref(zs, teacher.logits), "cd": 100 * cd_ref(es, teacher.label_embeddings, y),
                  "id": 1000 * id_ref(es, teacher.label_embeddings, y)}
    assert list(out.terms) == ["bce", *wanted]
    torch.testing.assert_close(out.terms["bce"], bce)
    for name, value in wanted.items():
        torch.testing.assert_close(out.terms[name], value, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.total, bce + sum(wanted.values()), rtol=1e-5, atol=1e-5)
    # The untaught label learns from BCE alone: its logits' gradient is sigmoid(z) - y.
    out.total.backward()
    torch.testing.assert_close(student.logits.grad[:, 1], torch.sigmoid(student.logits[:, 1]) - targets[:, 1])
    if student.label_embeddings.grad is not None:  # read by l2d's CD and ID: never the untaught label's
        assert torch.count_nonzero(student.label_embeddings.grad[:, 1]) == 0


def test_train_step_slices_by_index_and_keeps_all_labels_without_exclusion():
    torch.manual_seed(0)
    student = create_model("tiny_cnn", 4, **HEAD).eval()  # no dropout: two passes agree
    images, targets = torch.rand(4, 3, 32, 32), (torch.rand(4, 4) < 0.5).float()
    teacher = ModelOutput(torch.randn(4, 2))
    step = TrainStep(student, create_distiller("kd"), label_columns=[3, 1])
    total, terms = step(images, teacher, targets)
    s = student(images)
    hand = distill_taught_labels(create_distiller("kd"), s, teacher, targets, torch.tensor([3, 1]))
    torch.testing.assert_close(total, hand.total)
    assert "taught" not in step.state_dict()  # rebuilt by each run, not saved in checkpoints
    whole = TrainStep(student, create_distiller("kd"))
    total, _ = whole(images, ModelOutput(torch.randn(4, 4)), targets)
    assert whole.label_columns is None and torch.isfinite(total)


def test_excluded_labels_run_end_to_end(csv_root, teacher_files, tmp_path):
    weights, _ = teacher_files
    classes = tmp_path / "no_fish.txt"
    classes.write_text("fish_x\nzebra\ndog\ncat\nlion\nbird\n")  # the teacher's outputs, 'fish' under another name
    out = tmp_path / "run"
    assert main(run_flags(csv_root, out, "--method", "kd", "--teacher-model", ARCH, "--teacher-weights", str(weights),
                          "--teacher-classes", str(classes), "--teacher-missing-labels", "exclude",
                          "--teacher-img-size", "32")) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["teacher"]["classes"]["excluded"] == ["fish"] and metrics["teacher"]["classes"]["used"] == 3
    assert metrics["num_labels_evaluated"] == 4  # the student still predicts every label


# ---------------------------------------------------------------- what each term reads

def test_every_distiller_declares_the_teacher_part_of_each_term():
    n, q = 4, 3
    student = ModelOutput(torch.randn(n, q), torch.randn(n, q, 8), [torch.randn(n, 4, 4, 4), torch.randn(n, 8, 2, 2)])
    teacher = ModelOutput(torch.randn(n, q), torch.randn(n, q, 8), [torch.randn(n, 4, 4, 4), torch.randn(n, 8, 2, 2)])
    targets = torch.tensor([[1, 1, 0], [1, 0, 1], [1, 1, 1], [0, 1, 1]]).float()
    for name in list_distillers():
        distiller = create_distiller(name)
        distiller.build(student, teacher)
        terms = set(distiller(student, teacher, targets).terms) - {"bce"}
        assert set(distiller.teacher_terms) == terms, name
        assert set(distiller.teacher_terms.values()) <= {"logits", "label_embeddings", "features"}, name
    parts = {"logits": "the teacher as given", "label_embeddings": "the fitted head"}
    assert term_sources(create_distiller("l2d"), parts) == {
        "mld": "logits of the teacher as given", "cd": "label-wise embeddings of the fitted head",
        "id": "label-wise embeddings of the fitted head", "pkt": "feature maps of the teacher as given"}


def test_a_teacher_without_feature_maps_is_refused_before_training_under_the_default_l2d(csv_root, tmp_path):
    """The default L2D's relation term reads feature maps: a module that returns logits and label-wise embeddings
    but no feature map is refused with the fix, before any epoch; with the term left out, L2D trains from it."""

    class NoMaps(nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.conv = nn.Conv2d(3, len(TEACHER_CLASSES), 3)

        def forward(self, x):
            f = self.conv(x)
            return {"logits": f.mean(dim=(2, 3)), "label_embeddings": f.flatten(2)[:, :, :5]}

    settings = dict(teacher_classes=TEACHER_CLASSES, teacher_img_size=32, teacher_mean=[0.5] * 3, teacher_std=[0.5] * 3)
    with pytest.raises(ValueError, match=r"method 'l2d' reads the models' feature maps \(pkt\), but the teacher "
                                         r"returns none; pass --lambda pkt=0"):
        mlkd.distill(teacher=NoMaps(), method="l2d", **api_args(csv_root, tmp_path / "refused"), **settings)
    assert not (tmp_path / "refused" / "last.pt").exists()
    result = mlkd.distill(teacher=NoMaps(), method="l2d", lambdas={"pkt": 0},
                          **api_args(csv_root, tmp_path / "without"), **settings)
    assert (tmp_path / "without" / "metrics.json").is_file() and 0.0 <= result.metrics["mAP"] <= 1.0
