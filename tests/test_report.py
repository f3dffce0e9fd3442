"""common.report: a run's CSV log becomes a readable PNG of loss, accuracy and learning rate, drawn with PIL."""
from __future__ import annotations

import os

import pytest
from PIL import Image

from common import report
from common.logger import CsvLog

FIVE_EPOCHS = [  # epoch, lr, train_loss, val_loss, train_top1, val_top1: val top-1 peaks at epoch 3
    (0, 0.1, 6.9, 6.8, 1.0, 2.0), (1, 0.1, 5.5, 5.9, 10.0, 12.0), (2, 0.01, 4.2, 4.8, 25.0, 30.0),
    (3, 0.01, 3.1, 4.1, 40.0, 41.5), (4, 0.001, 2.5, 4.3, 55.0, 40.0),
]


def write_log(path: str, rows: list[tuple]) -> str:
    log = CsvLog(path)
    for epoch, lr, tl, vl, t1, v1 in rows:
        log.write({"epoch": epoch, "lr": lr, "train_loss": tl, "val_loss": vl, "train_top1": t1, "val_top1": v1,
                   "train_top5": min(100.0, t1 * 2), "val_top5": min(100.0, v1 * 2), "val_images": 256})
    return path


def run(run_dir: str, *flags: str) -> list[str]:
    return report.main(report.get_args_parser().parse_args([run_dir, *flags]))


def colours_in(image: Image.Image, box: tuple[int, int, int, int]) -> set[tuple[int, int, int]]:
    return {c for _, c in image.crop(box).getcolors(maxcolors=1 << 20)}


def test_five_epoch_log_gives_a_png_beside_it_with_both_loss_curves(tmp_path, capsys):
    csv_path = write_log(str(tmp_path / "main.csv"), FIVE_EPOCHS)
    written = run(str(tmp_path))
    png = str(tmp_path / "main.png")
    assert written == [png] and capsys.readouterr().out.strip() == png
    with Image.open(png) as image:
        image.load()
    assert image.size == report.SIZE
    assert len(image.getcolors(maxcolors=1 << 20)) > 10  # not blank: text, grid, several curves
    loss, accuracy, lr = report.layout(image.size)
    assert {report.TRAIN, report.VAL} <= colours_in(image, loss.plot)
    assert report.LR_COLOR in colours_in(image, lr.plot) and report.LR_COLOR not in colours_in(image, loss.plot)
    assert os.path.exists(csv_path)


def test_title_names_the_csv_and_the_best_val_top1_epoch(tmp_path):
    log = report.read_log(write_log(str(tmp_path / "main.csv"), FIVE_EPOCHS))
    assert report.best_val_top1(log) == (41.5, 3)
    assert report.title_of(log).startswith("main.csv: best val top-1 41.50% at epoch 3")


def test_single_epoch_log_is_drawn_as_points(tmp_path):
    write_log(str(tmp_path / "distributed.csv"), FIVE_EPOCHS[:1])
    (png,) = run(str(tmp_path))
    with Image.open(png) as image:
        loss = report.layout(image.size)[0]
        assert {report.TRAIN, report.VAL} <= colours_in(image.convert("RGB"), loss.plot)


def test_empty_cells_leave_gaps_and_an_empty_column_says_so(tmp_path):
    path = tmp_path / "network.csv"
    write_log(str(path), FIVE_EPOCHS)
    lines = path.read_text().splitlines()
    header = lines[0].split(",")
    rows = [line.split(",") for line in lines[1:]]
    for row in rows:
        row[header.index("lr")] = ""
    rows[2][header.index("val_loss")] = ""
    path.write_text("\n".join([lines[0]] + [",".join(r) for r in rows]) + "\n")
    log = report.read_log(str(path))
    assert log.columns["val_loss"][2] is None and all(v is None for v in log.columns["lr"])
    (png,) = run(str(tmp_path))
    assert os.path.exists(png)


def test_out_and_csv_flags_choose_the_input_and_the_png(tmp_path):
    csv_path = write_log(str(tmp_path / "main.csv"), FIVE_EPOCHS)
    out = str(tmp_path / "curves.png")
    assert report.main(report.get_args_parser().parse_args(["--csv", csv_path, "--out", out])) == [out]
    assert Image.open(out).size == report.SIZE


def test_other_csv_files_in_the_run_are_ignored(tmp_path):
    (tmp_path / "predictions.csv").write_text("path,class\na.jpg,cat\n")
    write_log(str(tmp_path / "dataparallel.csv"), FIVE_EPOCHS)
    assert run(str(tmp_path)) == [str(tmp_path / "dataparallel.png")]
    assert not (tmp_path / "predictions.png").exists()


def test_folder_without_a_training_log_exits_2_naming_the_folder(tmp_path, capsys):
    (tmp_path / "predictions.csv").write_text("path,class\na.jpg,cat\n")
    with pytest.raises(SystemExit) as exit_info:
        run(str(tmp_path))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: no training CSV log in") and str(tmp_path) in err and "main.csv" in err
    assert len(err.splitlines()) == 1


def test_missing_run_dir_exits_2_naming_it(tmp_path, capsys):
    missing = str(tmp_path / "nowhere")
    with pytest.raises(SystemExit) as exit_info:
        run(missing)
    assert exit_info.value.code == 2 and missing in capsys.readouterr().err


@pytest.mark.parametrize("lo, hi", [(0.0, 4.0), (2.3, 6.9), (1e-5, 1e-4), (0.00099, 0.001), (5.0, 5.0)])
def test_tick_labels_are_round_distinct_and_inside_the_range(lo, hi):
    ticks, step = report.nice_ticks(lo, hi)
    labels = [report.tick_label(t, step) for t in ticks]
    assert len(ticks) >= 1 and len(set(labels)) == len(labels)
    assert all(lo - 1e-12 <= t <= hi + 1e-12 for t in ticks)
