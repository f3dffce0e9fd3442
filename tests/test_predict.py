"""test.py: accuracy, per-class report and confusion matrix over a folder; top-k for single images; model loading.

    python -m pytest tests/test_predict.py -q
"""
from __future__ import annotations

import csv
import json
import os
import re
from collections import Counter

import pytest
import torch
from PIL import Image

from common.models import loading
from common.report import metrics
from conftest import SMALL
from inprocess import call_main, load_script

CLASSES = ["class0", "class1", "class2", "class3"]


@pytest.fixture(scope="module")
def probe_ckpt(tiny_data, trained_ckpt, tmp_path_factory) -> str:
    """A head trained by network.py on the GhostNet of train_main.py, with its class 2 and 3 outputs swapped, so
    that it is right on some images and wrong on others whatever the training reached."""
    out = str(tmp_path_factory.mktemp("probe"))
    call_main("network.py", tiny_data, "-a", "ghostnet", "--weights", trained_ckpt, "--epochs", "3", "-b", "16",
              "--lr", "0.5", "--lr-schedule", "constant", "--seed", "0", "--output-dir", out, *SMALL)
    ckpt = torch.load(os.path.join(out, "checkpoint.pth.tar"), map_location="cpu", weights_only=True)
    for key in ("classifier.weight", "classifier.bias"):
        ckpt["state_dict"][key] = ckpt["state_dict"][key][[0, 1, 3, 2]]
    path = os.path.join(out, "swapped.pth.tar")
    torch.save(ckpt, path)
    return path


@pytest.fixture(scope="module")
def evaluated(probe_ckpt, tiny_data, tmp_path_factory) -> tuple[dict, str, str]:
    """test.py --data on the tiny folder: (returned result, printed output, output folder)."""
    out = str(tmp_path_factory.mktemp("eval"))
    result, printed = call_main("test.py", "--ckpt", probe_ckpt, "--data", tiny_data, "-j", "0", "-b", "16",
                                "--output-dir", out)
    return result, printed, out


def read_csv(path: str) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_printed_accuracy_equals_the_one_recomputed_from_predictions_csv(evaluated):
    _result, printed, out = evaluated
    rows = read_csv(os.path.join(out, "predictions.csv"))
    top1, top5, loss = map(float, re.search(r"Acc@1 ([\d.]+) Acc@5 ([\d.]+) Loss ([\d.]+) on 40 images",
                                            printed).groups())
    assert len(rows) == 40
    assert top1 == pytest.approx(100 * sum(r["true"] == r["predicted"] for r in rows) / len(rows), abs=1e-3)
    assert top1 == pytest.approx(100 * sum(int(r["correct"]) for r in rows) / len(rows), abs=1e-3)
    in_top5 = [r["true"] in [t.split(":")[0] for t in r["top5"].split(";")] for r in rows]
    assert top5 == pytest.approx(100 * sum(in_top5) / len(rows), abs=1e-3)
    assert loss == pytest.approx(sum(float(r["loss"]) for r in rows) / len(rows), abs=1e-3)
    assert 0 < top1 < 100, "the fixture model should be right on some images and wrong on others"


@pytest.mark.slow
def test_per_class_report_and_confusion_csv_match_the_predictions(evaluated):
    _, _, out = evaluated
    pairs = Counter((r["true"], r["predicted"]) for r in read_csv(os.path.join(out, "predictions.csv")))
    matrix = {r["true\\predicted"]: r for r in read_csv(os.path.join(out, "confusion_matrix.csv"))}
    assert {(t, p): int(matrix[t][p]) for t in CLASSES for p in CLASSES if int(matrix[t][p])} == dict(pairs)
    for row in read_csv(os.path.join(out, "per_class.csv")):
        c = row["class"]
        correct, support = pairs[(c, c)], sum(n for (t, _), n in pairs.items() if t == c)
        predicted = sum(n for (_, p), n in pairs.items() if p == c)
        assert (int(row["support"]), int(row["correct"])) == (support, correct)
        assert float(row["recall"]) == pytest.approx(correct / support, abs=1e-6)
        assert float(row["precision"]) == pytest.approx(correct / predicted if predicted else 0.0, abs=1e-6)
    with Image.open(os.path.join(out, "confusion_matrix.png")) as png:
        assert png.width > 100 and png.height > 100


def test_class_scores_match_a_hand_computed_confusion_matrix():
    # true:  0 0 0 0 1 1 1 2 2 2   (class 2 is never predicted right, class 1 is never predicted at all)
    # pred:  0 0 0 1 0 2 0 0 0 2
    targets = torch.tensor([0, 0, 0, 0, 1, 1, 1, 2, 2, 2])
    preds = torch.tensor([0, 0, 0, 1, 0, 2, 0, 0, 0, 2])
    cm = metrics.confusion_matrix(targets, preds, 3)
    assert cm.tolist() == [[3, 1, 0], [2, 0, 1], [2, 0, 1]]
    s = metrics.class_scores(cm)
    assert s.support.tolist() == [4, 3, 3] and s.correct.tolist() == [3, 0, 1] and s.predicted.tolist() == [7, 1, 2]
    torch.testing.assert_close(s.precision, torch.tensor([3 / 7, 0.0, 1 / 2], dtype=torch.float64))
    torch.testing.assert_close(s.recall, torch.tensor([3 / 4, 0.0, 1 / 3], dtype=torch.float64))
    f1_0, f1_2 = 2 * (3 / 7) * (3 / 4) / (3 / 7 + 3 / 4), 2 * (1 / 2) * (1 / 3) / (1 / 2 + 1 / 3)
    torch.testing.assert_close(s.f1, torch.tensor([f1_0, 0.0, f1_2], dtype=torch.float64))
    test_py = load_script("test.py")
    assert test_py.confused_with(cm, 1, ["a", "b", "c"]) == "a:2 c:1"
    assert test_py.confused_with(cm, 0, ["a", "b", "c"]) == "b:1"


@pytest.mark.slow
@pytest.mark.parametrize("topk, shown", [(3, 3), (10, 4)])
def test_single_image_output_lists_k_classes_with_probabilities_summing_to_at_most_one(probe_ckpt, tiny_data,
                                                                                         topk, shown, tmp_path):
    images = [os.path.join(tiny_data, "val", c, "img0.png") for c in ("class0", "class2")]
    result, printed = call_main("test.py", "--ckpt", probe_ckpt, *images, "--topk", str(topk), "--json", "-j", "0",
                                "--output-dir", str(tmp_path))
    parsed = json.loads(printed)
    assert parsed == result and [r["path"] for r in parsed] == images
    for r in parsed:
        probs = [t["probability"] for t in r["top"]]
        assert len(probs) == shown and probs == sorted(probs, reverse=True)
        assert sum(probs) <= 1 + 1e-6 and {t["class"] for t in r["top"]} <= set(CLASSES)
    if shown == len(CLASSES):
        assert all(sum(t["probability"] for t in r["top"]) == pytest.approx(1, abs=1e-5) for r in parsed)


@pytest.mark.slow
def test_plain_output_is_one_line_per_class(probe_ckpt, tiny_data, tmp_path):
    image = os.path.join(tiny_data, "val", "class1", "img3.png")
    _, printed = call_main("test.py", "--ckpt", probe_ckpt, image, "--topk", "2", "-j", "0", "--output-dir",
                           str(tmp_path))
    lines = printed.splitlines()
    at = lines.index(image)
    assert re.fullmatch(r"  1\. +[\d.]+%  class\d", lines[at + 1]) and lines[at + 2].startswith("  2. ")
    assert re.search(r"ms/image, [\d.]+ images/s", printed)


def test_imagenet_wnid_folders_get_human_readable_names():
    wnids = [f"n{i:08d}" for i in range(1000)]
    names = loading.display_names(wnids)
    assert names[0] == "tench" and names[1] == "goldfish" and len(names) == 1000
    assert loading.display_names(CLASSES) == CLASSES
    assert loading.display_names(wnids[::-1])[0] == wnids[-1]  # not in class-index order: left as they are


@pytest.mark.slow
def test_plain_dataparallel_state_dict_needs_arch_and_gives_the_same_accuracy(probe_ckpt, evaluated, tiny_data,
                                                                              tmp_path, capsys):
    weights = torch.load(probe_ckpt, map_location="cpu", weights_only=True)["state_dict"]
    path = str(tmp_path / "dp_state_dict.pth")
    torch.save({"module." + k: v for k, v in weights.items()}, path)
    flags = ["--data", tiny_data, "-j", "0", "--val-resize-size", "32", "--val-crop-size", "32",
             "--output-dir", str(tmp_path)]
    with pytest.raises(SystemExit) as exc:
        call_main("test.py", "--ckpt", path, *flags)
    assert exc.value.code == 2 and "-a/--arch" in capsys.readouterr().err
    result, _ = call_main("test.py", "--ckpt", path, "-a", "ghostnet", *flags)
    assert (result["top1"], result["loss"]) == pytest.approx((evaluated[0]["top1"], evaluated[0]["loss"]))


@pytest.mark.slow
def test_whole_pickled_model_is_refused_unless_unsafe_load(probe_ckpt, evaluated, tiny_data, tmp_path, capsys):
    from ghost_net import ghost_net

    model = ghost_net(num_classes=4)
    model.load_state_dict(torch.load(probe_ckpt, map_location="cpu", weights_only=True)["state_dict"])
    path = str(tmp_path / "whole_model.pth")
    torch.save(model, path)
    flags = ["--ckpt", path, "--data", tiny_data, "-j", "0", "--val-resize-size", "32", "--val-crop-size", "32",
             "--output-dir", str(tmp_path)]
    with pytest.raises(SystemExit) as exc:
        call_main("test.py", *flags)
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "arbitrary code" in err and "--unsafe-load" in err
    result, _ = call_main("test.py", *flags, "--unsafe-load")
    assert result["top1"] == pytest.approx(evaluated[0]["top1"])


@pytest.mark.slow
def test_limit_evaluates_the_first_n_images(probe_ckpt, tiny_data, tmp_path):
    result, _ = call_main("test.py", "--ckpt", probe_ckpt, "--data", os.path.join(tiny_data, "val"), "--limit", "7",
                          "-j", "0", "--output-dir", str(tmp_path))
    rows = read_csv(str(tmp_path / "predictions.csv"))
    assert result["images"] == len(rows) == 7
    assert [os.path.basename(r["path"]) for r in rows] == sorted(os.listdir(os.path.join(tiny_data, "val",
                                                                                          "class0")))[:7]


def predicted_rows(folder: str) -> dict[str, tuple[str, float]]:
    """path -> (predicted class, confidence) of a predictions.csv in ``folder``."""
    rows = read_csv(os.path.join(folder, "predictions.csv"))
    return {r["path"]: (r["predicted"], float(r["confidence"])) for r in rows}


@pytest.mark.slow
def test_speed_defaults_give_the_predictions_of_every_feature_switched_off(probe_ckpt, evaluated, tiny_data,
                                                                           tmp_path):
    """Defaults (uint8 decode and resize, normalised per batch, channels_last, BatchNorm folded; GhostNet stays fp32
    on the CPU) against the classic path (PIL transforms, NCHW, fp32, BatchNorm apart), and against forced bf16."""
    _, printed, out = evaluated
    assert "eval: uint8 Resize(32, bilinear, antialias) + CenterCrop(32)" in printed
    assert "fp32, channels_last + BatchNorm folded" in printed
    flags = ["--ckpt", probe_ckpt, "--data", tiny_data, "-j", "0", "-b", "16"]
    classic, bf16 = str(tmp_path / "classic"), str(tmp_path / "bf16")
    result, classic_printed = call_main("test.py", *flags, "--no-uint8-pipeline", "--no-amp", "--no-channels-last",
                                        "--no-fold-bn", "--output-dir", classic)
    assert "(classic)" in classic_printed and "fp32, NCHW |" in classic_printed
    _, bf16_printed = call_main("test.py", *flags, "--amp", "--amp-dtype", "bf16", "--output-dir", bf16)
    assert "AMP bf16, channels_last" in bf16_printed
    fast, reference, half = predicted_rows(out), predicted_rows(classic), predicted_rows(bf16)
    assert len(fast) == len(reference) == len(half) == 40
    assert {p: c for p, (c, _) in fast.items()} == {p: c for p, (c, _) in reference.items()}
    assert max(abs(fast[p][1] - reference[p][1]) for p in fast) < 0.02  # a grey level here and there
    flipped = [p for p in fast if half[p][0] != reference[p][0]]  # bf16 rounding decides near-ties only
    assert len(flipped) <= 4 and all(reference[p][1] < 0.6 for p in flipped)
    assert max(abs(half[p][1] - reference[p][1]) for p in fast) < 0.05
    assert len({c for c, _ in reference.values()}) >= 3 and 0 < result["top1"] < 100  # not a constant model
