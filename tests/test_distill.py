"""Knowledge distillation: the loss against a hand computation, a frozen teacher kept out of the checkpoint, its
own normalisation, refused class mismatches, network.py's cached logits, and a 2-rank DDP run with a teacher."""
from __future__ import annotations

import math
import os

import pytest
import torch
import torch.nn as nn

from common.data import transforms
from common.errors import UserError
from common.models import factory
from common.parallel.precision import Precision
from common.train import distill
from common.train.step import TrainStep
from conftest import SMALL, make_image_folder, run_script
from inprocess import call_main

CLASSES = ["class0", "class1", "class2", "class3"]


def save_teacher(path: str, arch: str = "resnet18", classes=CLASSES, mean=None, std=None, seed: int = 1) -> str:
    """A checkpoint of this project's format holding a randomly initialised ``arch`` for ``classes``."""
    torch.manual_seed(seed)
    model = factory.create_model(arch, len(classes))
    args = {"arch": arch, "width_mult": 1.0, "val_resize_size": 32, "val_crop_size": 32}
    if mean is not None:
        args.update(mean=list(mean), std=list(std))
    torch.save({"arch": arch, "state_dict": model.state_dict(), "classes": list(classes), "args": args,
                "epoch": 1, "best_acc1": 50.0}, path)
    return path


def test_kd_loss_equals_the_formula_computed_by_hand():
    student = torch.tensor([[2.0, 0.5, -1.0], [0.1, 0.2, 0.3]])
    teacher = torch.tensor([[1.0, 1.5, -0.5], [3.0, -1.0, 0.0]])
    target = torch.tensor([0, 2])
    t, kd_w, task_w, smooth = 3.0, 0.7, 0.4, 0.1
    loss = distill.DistillLoss(nn.CrossEntropyLoss(label_smoothing=smooth), distill.KDConfig(t, kd_w, task_w))
    got = loss(student, target, teacher).item()

    def softmax(row):
        e = [math.exp(v) for v in row]
        return [v / sum(e) for v in e]

    task = kl = 0.0
    for s_row, t_row, y in zip(student.tolist(), teacher.tolist(), target.tolist()):
        q = softmax(s_row)
        smoothed = [(1 - smooth) * (k == y) + smooth / 3 for k in range(3)]
        task -= sum(w * math.log(p) for w, p in zip(smoothed, q)) / 2
        p_t, p_s = softmax([v / t for v in t_row]), softmax([v / t for v in s_row])
        kl += sum(a * math.log(a / b) for a, b in zip(p_t, p_s)) / 2
    assert got == pytest.approx(task_w * task + kd_w * t * t * kl, rel=1e-6)


def test_soft_targets_follow_mixup_targets_and_a_batch_of_one_teacher_agrees_with_itself():
    logits = torch.randn(4, 5)
    assert distill.soft_target_loss(logits, logits, 2.0).item() == pytest.approx(0.0, abs=1e-6)
    soft = torch.softmax(torch.randn(4, 5), 1)  # MixUp/CutMix targets: the task loss takes probabilities
    loss = distill.DistillLoss(nn.CrossEntropyLoss(), distill.KDConfig(1.0, 0.0, 1.0))
    assert loss(logits, soft, logits).item() == pytest.approx(nn.CrossEntropyLoss()(logits, soft).item())


def test_teacher_gets_no_gradient_and_the_student_the_distillation_gradient():
    torch.manual_seed(0)
    student, teacher_net = nn.Linear(6, 3), nn.Linear(6, 3)
    before = {k: v.clone() for k, v in teacher_net.state_dict().items()}
    teacher = distill.Teacher(teacher_net)
    opt = torch.optim.SGD(student.parameters(), lr=0.5)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda it: 1.0)
    cfg = distill.KDConfig(2.0, 1.0, 0.0)  # the soft targets alone: the student moves towards the teacher
    step = TrainStep(student, distill.DistillLoss(nn.CrossEntropyLoss(), cfg), opt, sched, Precision(),
                     teacher=teacher)
    x, y = torch.randn(8, 6), torch.randint(0, 3, (8,))
    expected = student.weight.detach().clone()
    w = expected.clone().requires_grad_(True)
    hand = distill.soft_target_loss(x @ w.T + student.bias.detach(), teacher_net(x).detach(), 2.0)
    hand.backward()
    first = distill.soft_target_loss(student(x), teacher_net(x), 2.0).item()
    step(x, y)
    assert all(p.grad is None for p in teacher_net.parameters())
    assert all(torch.equal(before[k], v) for k, v in teacher_net.state_dict().items())
    assert torch.allclose(student.weight, expected - 0.5 * w.grad, atol=1e-6)
    assert distill.soft_target_loss(student(x), teacher_net(x), 2.0).item() < first


def test_teacher_with_other_normalisation_sees_its_own(tmp_path):
    raw = torch.rand(2, 3, 8, 8)
    student_norm = transforms.IMAGENET
    own = transforms.Normalization((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    path = save_teacher(str(tmp_path / "t.pth.tar"), mean=own.mean, std=own.std)
    teacher = distill.load_teacher(distill.TeacherSpec(checkpoint=path), CLASSES, student_norm)
    seen = []
    teacher.model.register_forward_pre_hook(lambda m, inp: seen.append(inp[0]))
    student_input = (raw - torch.tensor(student_norm.mean).view(1, 3, 1, 1)) / torch.tensor(student_norm.std).view(
        1, 3, 1, 1)
    teacher(student_input)
    assert torch.allclose(seen[0], (raw - 0.5) / 0.5, atol=1e-5)
    assert "re-normalised" in teacher.description
    same = distill.load_teacher(distill.TeacherSpec(checkpoint=path), CLASSES, own)
    assert same.renorm is None and "student's mean/std" in same.description


@pytest.mark.parametrize(("classes", "words"), [
    (CLASSES[:3], "has 3 outputs but the training data has 4 classes"),
    (["class0", "class1", "class3", "class2"], "class 2 is 'class3' there, 'class2' here"),
])
def test_teacher_of_other_classes_is_refused_in_one_line(tmp_path, classes, words):
    path = save_teacher(str(tmp_path / "t.pth.tar"), classes=classes)
    with pytest.raises(UserError) as info:
        distill.load_teacher(distill.TeacherSpec(checkpoint=path), CLASSES, transforms.IMAGENET)
    assert words in str(info.value) and "\n" not in str(info.value)


def test_teacher_flags_need_weights(tmp_path):
    from conftest import refusal
    from test_recipes import parse

    assert "needs weights" in refusal(parse, "--kd-model", "resnet18")
    assert "does not exist" in refusal(parse, "--kd-checkpoint", str(tmp_path / "none.pth"))
    assert "give one of them" in refusal(parse, "--kd-model", "resnet18", "--kd-pretrained", "--kd-checkpoint",
                                         str(tmp_path))


@pytest.fixture(scope="module")
def few_images(tmp_path_factory) -> str:
    """4 classes, 6 train and 2 val images each: a few steps of a distilled run."""
    return make_image_folder(str(tmp_path_factory.mktemp("few")), train_per_class=6, val_per_class=2)


@pytest.mark.slow
def test_distilled_run_records_the_flags_and_keeps_the_teacher_out_of_the_checkpoint(few_images, tmp_path):
    teacher = save_teacher(str(tmp_path / "teacher.pth.tar"), arch="mobilenet_v3_small")
    out = str(tmp_path / "run")
    _, printed = call_main("train_main.py", few_images, "-a", "ghostnet", "--epochs", "1", "-b", "8", "--lr", "0.02",
                           "--seed", "0", "--no-accel", "--output-dir", out, "--kd-checkpoint", teacher,
                           "--kd-temperature", "4", "--kd-loss-weight", "0.5", "--model-ema", *SMALL)
    assert "distillation from mobilenet_v3_small" in printed and "T 4" in printed
    ckpt = torch.load(os.path.join(out, "checkpoint.pth.tar"), weights_only=True)
    student_keys = set(factory.create_model("ghostnet", 4).state_dict())
    assert set(ckpt["state_dict"]) == student_keys and set(ckpt["state_dict_ema"]) == student_keys
    assert (ckpt["args"]["kd_checkpoint"], ckpt["args"]["kd_temperature"], ckpt["args"]["kd_loss_weight"],
            ckpt["args"]["task_loss_weight"]) == (teacher, 4.0, 0.5, 1.0)


@pytest.mark.slow
def test_network_py_caches_the_teachers_logits_once_per_image(few_images, tmp_path):
    import network

    torch.manual_seed(0)
    weights = str(tmp_path / "backbone.pth")
    torch.save(factory.create_model("resnet18", 4).state_dict(), weights)
    teacher_path = save_teacher(str(tmp_path / "teacher.pth.tar"))
    args = network.get_args_parser().parse_args(
        [few_images, "-a", "resnet18", "--weights", weights, "--kd-checkpoint", teacher_path, "--epochs", "2",
         "-b", "8", "--no-accel", "--output-dir", str(tmp_path / "probe"), *SMALL])
    calls = []
    original = distill.Teacher.__call__

    def counting(self, images):
        calls.append(len(images))
        return original(self, images)

    distill.Teacher.__call__ = counting
    try:
        result = network.main(args)
    finally:
        distill.Teacher.__call__ = original
    assert sum(calls) == 24  # each train image once, while the features are cached; none in the 2 epochs
    ckpt = torch.load(os.path.join(str(tmp_path / "probe"), "checkpoint.pth.tar"), weights_only=True)
    assert set(ckpt["state_dict"]) == set(factory.create_model("resnet18", 4).state_dict())
    assert result["best_acc1"] is not None


def test_cached_rows_carry_the_teachers_logits_after_the_features():
    import network

    features, logits = torch.randn(5, 7), torch.randn(5, 4)
    rows, targets, _ = network.FeatureSet(features, torch.arange(5), logits)[[3, 1]]
    assert targets.tolist() == [3, 1]
    head = nn.Linear(7, 4)
    packed = network.PackedHead(head, 7)
    assert torch.equal(packed(rows), head(features[[3, 1]]))
    assert torch.equal(packed(features[[3, 1]]), head(features[[3, 1]]))  # validation rows: features alone
    assert torch.equal(network.CachedSoftTargets(7)(rows), logits[[3, 1]])


@pytest.mark.slow
def test_two_ddp_ranks_train_with_a_teacher_on_each(few_images, tmp_path):
    teacher = save_teacher(str(tmp_path / "teacher.pth.tar"), arch="mobilenet_v3_small")
    out = str(tmp_path / "ddp")
    proc = run_script("train_multiprocessing.py", few_images, "-a", "ghostnet", "--epochs", "1", "-b", "8",
                      "--lr", "0.02", "--seed", "0", "--nprocs", "2", "--output-dir", out, "--kd-checkpoint",
                      teacher, *SMALL)
    assert "distillation from mobilenet_v3_small" in proc.stdout
    ckpt = torch.load(os.path.join(out, "checkpoint.pth.tar"), weights_only=True)
    assert set(ckpt["state_dict"]) == set(factory.create_model("ghostnet", 4).state_dict())
    assert ckpt["args"]["kd_checkpoint"] == teacher
