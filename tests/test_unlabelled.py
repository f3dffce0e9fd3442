"""Images without labels: test.py's predictions.csv and counts, and the sorter by predicted class with _uncertain/.

    python -m pytest tests/test_unlabelled.py -q
"""
from __future__ import annotations

import collections
import csv
import errno
import json
import os
import shutil

import pytest
import torch
from PIL import Image
from torchvision.transforms import v2

from common.data import imagefolder
from common.models import factory
from conftest import make_image_folder
from inprocess import call_main, load_script
from test_classify import tree
from test_untrusted_writes import one_line_exit

CLASSES = ["class0", "class1", "class2", "class3"]
SIZE = ["--val-resize-size", "32", "--val-crop-size", "32", "-j", "0", "-b", "8"]
CLASSIC = ["--no-uint8-pipeline", "--no-fold-bn", "--no-channels-last", "--no-amp"]  # plain torchvision, fp32


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> dict:
    """A flat folder of 20 JPEGs and PNGs (names unrelated to classes), an unreadable one and a text file; and the
    same images in two nested albums."""
    root = str(tmp_path_factory.mktemp("photos"))
    data = make_image_folder(os.path.join(root, "src"), 0, 5, size=(48, 40), seed=5, ext="jpg")
    flat, albums = os.path.join(root, "flat"), os.path.join(root, "albums")
    sources = sorted(os.path.join(d, f) for d, _, fs in os.walk(os.path.join(data, "val")) for f in fs)
    os.makedirs(flat)
    for n, src in enumerate(sources):
        album = os.path.join(albums, f"2024-0{n % 2 + 1}", "day")
        os.makedirs(album, exist_ok=True)
        shutil.copy(src, os.path.join(flat, f"IMG_{n:04d}.jpg"))
        shutil.copy(src, os.path.join(album, f"IMG_{n // 2:04d}.jpg"))
    Image.open(sources[0]).save(os.path.join(flat, "scan.png"))
    with open(os.path.join(flat, "broken.jpg"), "wb") as f:
        f.write(b"\xff\xd8 not a JPEG")
    with open(os.path.join(flat, "notes.txt"), "w") as f:
        f.write("not an image\n")
    return {"flat": flat, "albums": albums, "readable": len(sources) + 1}


@pytest.fixture(scope="module")
def model(photos, tmp_path_factory) -> str:
    """A GhostNet 0.5x checkpoint with random weights and a sharpened classifier whose bias centres each class's
    logit over the photos: several classes are predicted, with confidences from near-chance to near-certain."""
    torch.manual_seed(0)
    net = factory.create_model("ghostnet", len(CLASSES), width_mult=0.5).eval()
    features = []
    net.classifier.register_forward_hook(lambda _m, inputs, _out: features.append(inputs[0]))
    with torch.no_grad():
        net(torch.stack([classic_input(p) for p in imagefolder.loose_images(photos["flat"]) if "broken" not in p]))
        state = net.state_dict()
        state["classifier.weight"] *= 60
        state["classifier.bias"] = -(features[0] @ state["classifier.weight"].T).mean(0)
    path = str(tmp_path_factory.mktemp("model") / "model.pth.tar")
    torch.save({"epoch": 1, "arch": "ghostnet", "state_dict": state, "best_acc1": 0.0, "classes": CLASSES,
                "args": {"val_resize_size": 32, "val_crop_size": 32, "width_mult": 0.5}}, path)
    return path


def read_csv(path: str) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def classic_input(path: str) -> torch.Tensor:
    """An image as plain torchvision prepares it: PIL resize 32 (as --no-uint8-pipeline), centre crop 32, ImageNet
    normalisation, fp32."""
    tf = v2.Compose([v2.Resize(32), v2.CenterCrop(32), v2.PILToTensor(), v2.ToDtype(torch.float32, scale=True),
                     v2.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])
    return tf(Image.open(path).convert("RGB"))


def reference_probabilities(ckpt: str, path: str) -> torch.Tensor:
    """The model's softmax on one image, computed with plain torch on ``classic_input``."""
    saved = torch.load(ckpt, map_location="cpu", weights_only=True)
    net = factory.create_model("ghostnet", len(CLASSES), width_mult=0.5)
    net.load_state_dict(saved["state_dict"])
    with torch.no_grad():
        return net.eval()(classic_input(path)[None]).softmax(1)[0]


@pytest.fixture(scope="module")
def predicted(model, photos, tmp_path_factory) -> dict:
    out = str(tmp_path_factory.mktemp("predicted"))
    result, printed = call_main("test.py", "--ckpt", model, "--data", photos["flat"], "--output-dir", out, *SIZE,
                                *CLASSIC)
    return {"result": result, "printed": printed, "out": out,
            "rows": read_csv(os.path.join(out, "predictions.csv"))}


def test_predictions_csv_equals_a_plain_torchvision_computation(predicted, model, photos):
    rows = predicted["rows"]
    assert len(rows) == photos["readable"] and predicted["result"]["unreadable"] == 1
    assert list(rows[0]) == ["path", "predicted", "confidence", "top4"]
    for row in rows:
        probs = reference_probabilities(model, row["path"])
        top = [pair.rsplit(":", 1) for pair in row["top4"].split(";")]
        assert [c for c, _ in top] == [CLASSES[i] for i in probs.argsort(descending=True).tolist()]
        assert [float(p) for _, p in top] == pytest.approx(probs.sort(descending=True).values.tolist(), abs=2e-5)
        assert row["predicted"] == top[0][0] and float(row["confidence"]) == float(top[0][1])


def test_counts_are_printed_and_written_as_the_predictions_give_them(predicted):
    counts = collections.Counter(row["predicted"] for row in predicted["rows"])
    assert len(counts) >= 2  # the sharpened random head predicts several classes
    written = read_csv(os.path.join(predicted["out"], "predicted_counts.csv"))
    assert {r["class"]: int(r["images"]) for r in written} == dict(counts)
    assert [int(r["images"]) for r in written] == sorted(counts.values(), reverse=True)
    for cls, n in counts.items():
        assert any(line.split()[:2] == [cls, str(n)] for line in predicted["printed"].splitlines()), cls
    assert "unreadable skipped, e.g. " in predicted["printed"] and "broken.jpg" in predicted["printed"]


def test_files_given_one_by_one_get_the_same_csv_and_json(predicted, model, photos, tmp_path, capsys):
    chosen = [r["path"] for r in predicted["rows"][:3]]
    result, printed = call_main("test.py", "--ckpt", model, *chosen, "--json", "--output-dir", str(tmp_path), *SIZE,
                                *CLASSIC)
    assert json.loads(printed) == result and [r["path"] for r in result] == chosen
    assert read_csv(tmp_path / "predictions.csv") == predicted["rows"][:3]
    assert "=> wrote predictions.csv" in capsys.readouterr().err  # stdout stays pure JSON


@pytest.fixture(scope="module")
def sorted_once(model, photos, predicted, tmp_path_factory) -> dict:
    out = str(tmp_path_factory.mktemp("sorted") / "out")
    threshold = sorted(float(r["confidence"]) for r in predicted["rows"])[len(predicted["rows"]) // 2]
    result, printed = call_main("classify_test_data.py", "--ckpt", model, "--data", photos["flat"], "--out", out,
                                "--min-confidence", str(threshold), *SIZE, *CLASSIC)
    return {"out": out, "threshold": threshold, "result": result, "printed": printed}


def test_sorter_places_each_image_as_test_py_predicted_it(sorted_once, predicted):
    out, expected = sorted_once["out"], {}
    for row in predicted["rows"]:
        stem, ext = os.path.splitext(os.path.basename(row["path"]))
        sure = float(row["confidence"]) >= sorted_once["threshold"]
        expected[os.path.join(row["predicted"], stem + ext) if sure else
                 os.path.join("_uncertain", f"{stem}__pred-{row['predicted']}{ext}")] = row["path"]
    placed = {p for p in tree(out) if os.sep in p}
    assert placed == set(expected)
    for dest, src in expected.items():
        assert os.path.samefile(os.path.join(out, dest), src)  # hard links to the sources
    manifest = read_csv(os.path.join(out, "manifest.csv"))
    assert {r["destination"]: r["source"] for r in manifest} == expected
    assert list(manifest[0]) == ["source", "destination", "predicted", "confidence"]
    summary = {r["class"]: int(r["images"]) for r in read_csv(os.path.join(out, "summary.csv"))}
    assert summary["_uncertain"] == sum(d.startswith("_uncertain") for d in expected)
    assert summary["all"] == len(expected) and os.path.isfile(os.path.join(out, "uncertain.png"))


def test_sorter_rerun_changes_nothing_and_a_new_threshold_moves_files(sorted_once, model, photos):
    out, before = sorted_once["out"], tree(sorted_once["out"])
    _, printed = call_main("classify_test_data.py", "--ckpt", model, "--data", photos["flat"], "--out", out,
                           "--min-confidence", str(sorted_once["threshold"]), *SIZE, *CLASSIC)
    assert tree(out) == before
    assert f"{photos['readable']} already in place; 0 stale files removed" in printed
    result, printed = call_main("classify_test_data.py", "--ckpt", model, "--data", photos["flat"], "--out", out,
                                *SIZE, *CLASSIC)
    assert not os.path.exists(os.path.join(out, "_uncertain"))
    uncertain = sum(p.startswith("_uncertain") for p in before)
    assert result["stale_removed"] == uncertain and f"{uncertain} hard links" in printed


def test_unlabelled_flag_reads_nested_albums_with_unique_names(model, photos, tmp_path):
    result, _ = call_main("test.py", "--ckpt", model, "--data", photos["albums"], "--unlabelled", "--output-dir",
                          str(tmp_path / "t"), *SIZE)
    assert result["images"] == photos["readable"] - 1
    call_main("classify_test_data.py", "--ckpt", model, "--data", photos["albums"], "--unlabelled", "--out",
              str(tmp_path / "s"), *SIZE)
    names = [os.path.basename(p) for p in tree(str(tmp_path / "s")) if os.sep in p]
    assert len(names) == len(set(names)) == photos["readable"] - 1
    assert all(n.startswith(("2024-01__day__IMG_", "2024-02__day__IMG_")) for n in names)


def test_a_flat_imagenet_val_folder_is_still_pointed_at_valprep(model, tmp_path, capsys):
    val = tmp_path / "val"
    val.mkdir()
    for n in (1, 2):
        Image.new("RGB", (40, 40), (n * 90, 20, 20)).save(val / f"ILSVRC2012_val_{n:08d}.JPEG", format="JPEG")
    for script in ("test.py", "classify_test_data.py"):
        out = ["--out", str(tmp_path / "s")] if script != "test.py" else ["--output-dir", str(tmp_path / "t")]
        line = one_line_exit(capsys, 2, lambda s=script, o=out: call_main(s, "--ckpt", model, "--data", str(val), *o))
        assert "holds 2 ImageNet val images but no class folders" in line and "common.data.valprep" in line
        assert "--unlabelled" in line
    result, _ = call_main("test.py", "--ckpt", model, "--data", str(val), "--unlabelled", "--output-dir",
                          str(tmp_path / "t"), *SIZE)
    assert result["images"] == 2


def test_refusals_name_the_flag(model, photos, tmp_path, capsys):
    labelled = make_image_folder(str(tmp_path / "labelled"), 0, 1)
    line = one_line_exit(capsys, 2, lambda: call_main("classify_test_data.py", "--ckpt", model, "--data", labelled,
                                                      "--out", str(tmp_path / "s"), "--min-confidence", "0.5"))
    assert line.startswith("error: --min-confidence is for images without labels")
    image = os.path.join(photos["flat"], "IMG_0000.jpg")
    line = one_line_exit(capsys, 2, lambda: call_main("test.py", "--ckpt", model, image, "--unlabelled"))
    assert "--unlabelled reads the images under a folder" in line
    line = one_line_exit(capsys, 2, lambda: call_main("test.py", "--ckpt", model, "--data", photos["flat"],
                                                      "--output-dir", os.path.join(photos["flat"], "out")))
    assert "is inside --data" in line
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    line = one_line_exit(capsys, 2, lambda: call_main("test.py", "--ckpt", model, "--data", str(tmp_path / "empty"),
                                                      "--unlabelled"))
    assert "holds no image files (.jpg, " in line and ".webp" in line


def test_a_failed_placement_leaves_a_true_manifest_and_a_rerun_finishes(model, photos, monkeypatch, tmp_path,
                                                                        capsys):
    sorter = load_script("classify_test_data.py")
    real_place, calls = sorter.place, []

    def place_until_full(src, dest, mode):
        calls.append(dest)
        if len(calls) > 5:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_place(src, dest, mode)

    monkeypatch.setattr(sorter, "place", place_until_full)
    out, argv = str(tmp_path / "out"), ["--ckpt", model, "--data", photos["flat"], "--min-confidence", "0.5", *SIZE]
    with pytest.raises(SystemExit) as exc:
        sorter.main(sorter.get_args_parser().parse_args([*argv, "--out", out]))
    assert exc.value.code == 2 and "5 placed into" in capsys.readouterr().err
    listed = {r["destination"] for r in read_csv(os.path.join(out, "manifest.csv"))}
    assert listed == {p for p in tree(out) if os.sep in p} and len(listed) == 5
    monkeypatch.undo()
    call_main("classify_test_data.py", *argv, "--out", out)
    call_main("classify_test_data.py", *argv, "--out", str(tmp_path / "fresh"))
    assert {p: v[3] for p, v in tree(out).items()} == {p: v[3] for p, v in tree(str(tmp_path / "fresh")).items()}
