"""common.report: a run's CSV log becomes a readable PNG of loss, accuracy and learning rate, drawn with matplotlib;
common.figures: the chart helpers it shares (atomic PNG writes, the missing-matplotlib error), the confusion-matrix
heatmap and the contact sheet, whose thumbnails are decoded as training decodes them."""
from __future__ import annotations

import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms

from common import files
from common.data.images import load_rgb
from common.errors import UserError
from common.report import curves, figures
from common.train.watch import CsvLog
from conftest import ROOT

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
    return curves.main(curves.get_args_parser().parse_args([run_dir, *flags]))


def colours_in(image: Image.Image, box: tuple[int, int, int, int]) -> set[tuple[int, int, int]]:
    return {c for _, c in image.convert("RGB").crop(box).getcolors(maxcolors=1 << 20)}


def drawn(csv_path: str):
    """The figure ``python -m common.report`` saves for this CSV, laid out as in the PNG."""
    fig = curves.figure(curves.read_log(csv_path))
    fig.canvas.draw()
    return fig


def plot_boxes(csv_path: str) -> list[tuple[int, int, int, int]]:
    """Each panel's plot area in PNG pixels (x0, y0, x1, y1), inside the frame: loss, accuracy, learning rate."""
    fig = drawn(csv_path)
    height = fig.bbox.height
    boxes = []
    for ax in fig.axes:
        b = ax.get_window_extent()
        boxes.append((math.ceil(b.x0) + 1, math.ceil(height - b.y1) + 1, math.floor(b.x1) - 1,
                      math.floor(height - b.y0) - 1))
    return boxes


def test_five_epoch_log_gives_a_png_beside_it_with_both_loss_curves(tmp_path, capsys):
    csv_path = write_log(str(tmp_path / "main.csv"), FIVE_EPOCHS)
    written = run(str(tmp_path))
    png = str(tmp_path / "main.png")
    assert written == [png] and capsys.readouterr().out.strip() == png
    with Image.open(png) as image:
        image.load()
    assert image.size == curves.SIZE
    assert len(image.getcolors(maxcolors=1 << 20)) > 10  # not blank: text, grid, several curves
    loss, _accuracy, lr = plot_boxes(csv_path)
    assert {curves.TRAIN, curves.VAL} <= colours_in(image, loss)
    assert curves.LR_COLOR in colours_in(image, lr) and curves.LR_COLOR not in colours_in(image, loss)
    assert os.path.exists(csv_path)


def test_title_names_the_csv_and_the_best_val_top1_epoch(tmp_path):
    log = curves.read_log(write_log(str(tmp_path / "main.csv"), FIVE_EPOCHS))
    assert curves.best_val_top1(log) == (41.5, 3)
    assert curves.title_of(log).startswith("main.csv: best val top-1 41.50% at epoch 3")


def test_title_of_a_resumed_run_says_where_it_resumed_and_which_epochs_it_ran_again(tmp_path):
    """Stopped in epoch 2 at step 6 and resumed there; stopped again and resumed from epoch 3's start; then resumed
    from an older checkpoint (epoch 2), which logs epochs 2 and 3 again: the rows drawn are the last of each."""
    path = str(tmp_path / "main.csv")
    log = CsvLog(path)
    rows = [(0, None, 20.0), (1, None, 30.0), (2, 6, 45.0), (3, 0, 50.0), (2, 0, 40.0), (3, None, 42.0),
            (4, None, 44.0)]
    for epoch, resumed_at, top1 in rows:
        log.write({"epoch": epoch, "lr": 0.1, "train_loss": 1.0, "val_loss": 1.0, "train_top1": top1,
                   "val_top1": top1, "resumed_at_step": resumed_at})
    read = curves.read_log(path)
    assert read.columns["val_top1"] == [20.0, 30.0, 40.0, 42.0, 44.0]
    assert (read.resumes, read.relogged) == (((2, 6), (3, 0), (2, 0)), (2, 3))
    assert curves.title_of(read) == ("main.csv: best val top-1 44.00% at epoch 4 (5 epochs; resumed at epoch 2 step "
                                     "6, epoch 3, epoch 2; re-run: epochs 2, 3, last kept)")
    assert curves._listed(list("abcde")) == "a, b, c and 2 more"
    # each panel marks the resumes: on epoch 2 (mid-epoch), between epochs 1 and 2 and between 2 and 3 (at a start)
    assert curves.resume_marks(read) == [1.5, 2.0, 2.5]
    fig = drawn(path)
    resume_hex = "#{:02x}{:02x}{:02x}".format(*curves.RESUME_COLOR)
    for ax in fig.axes:
        marks = [line for line in ax.get_lines() if line.get_color() == resume_hex]
        assert sorted(line.get_xdata()[0] for line in marks) == [1.5, 2.0, 2.5]
    legends = [[t.get_text() for t in ax.get_legend().get_texts()] for ax in fig.axes]
    assert legends[0].count("resumed") == 1 and not any("resumed" in names for names in legends[1:])


def test_a_log_written_before_the_resume_column_reads_as_not_resumed(tmp_path):
    path = tmp_path / "main.csv"
    path.write_text("epoch,lr,train_loss,val_loss,train_top1,val_top1\n0,0.1,1,1,10,12\n")
    read = curves.read_log(str(path))
    assert (read.resumes, read.relogged) == ((), ())
    assert curves.title_of(read) == "main.csv: best val top-1 12.00% at epoch 0 (1 epoch)"


def test_single_epoch_log_is_drawn_as_points(tmp_path):
    csv_path = write_log(str(tmp_path / "distributed.csv"), FIVE_EPOCHS[:1])
    (png,) = run(str(tmp_path))
    with Image.open(png) as image:
        loss = plot_boxes(csv_path)[0]
        assert {curves.TRAIN, curves.VAL} <= colours_in(image, loss)
    assert drawn(csv_path).axes[0].get_xlim() == (-0.5, 0.5)  # the one epoch in the middle


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
    log = curves.read_log(str(path))
    assert log.columns["val_loss"][2] is None and all(v is None for v in log.columns["lr"])
    (png,) = run(str(tmp_path))
    assert os.path.exists(png)
    loss_ax, _, lr_ax = drawn(str(path)).axes
    val_loss = next(line for line in loss_ax.get_lines() if line.get_label() == "val loss")
    assert math.isnan(val_loss.get_ydata()[2]) and not lr_ax.get_lines()
    assert [t.get_text() for t in lr_ax.texts] == ["no values in the log"]


def test_out_and_csv_flags_choose_the_input_and_the_png(tmp_path):
    csv_path = write_log(str(tmp_path / "main.csv"), FIVE_EPOCHS)
    out = str(tmp_path / "curves.png")
    assert curves.main(curves.get_args_parser().parse_args(["--csv", csv_path, "--out", out])) == [out]
    assert Image.open(out).size == curves.SIZE


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
def test_tick_labels_are_round_distinct_and_inside_the_range(tmp_path, lo, hi):
    rows = [(e, lo + (hi - lo) * e / 4, *FIVE_EPOCHS[e][2:]) for e in range(5)]  # the lr panel spans [lo, hi]
    ax = drawn(write_log(str(tmp_path / "main.csv"), rows)).axes[2]
    bottom, top = ax.get_ylim()
    assert (bottom, top) == curves.value_range([lo, hi]) and bottom <= lo and hi <= top
    shown = [(t, label.get_text()) for t, label in zip(ax.get_yticks(), ax.get_yticklabels()) if bottom <= t <= top]
    ticks, labels = [t for t, _ in shown], [label for _, label in shown]
    assert len(ticks) >= 2 and all(labels) and len(set(labels)) == len(labels)
    step = ticks[1] - ticks[0]
    mantissa = step / 10 ** math.floor(math.log10(step))
    assert any(math.isclose(mantissa, m, rel_tol=1e-6) for m in (1, 2, 2.5, 5, 10))
    assert all(math.isclose(t / step, round(t / step), abs_tol=1e-6) for t in ticks)


# ---------------------------------------------------------------------------------------------------- curves = CSV

def test_each_curve_is_its_csv_column_and_the_axes_span_the_data(tmp_path):
    csv_path = write_log(str(tmp_path / "main.csv"), FIVE_EPOCHS)
    log = curves.read_log(csv_path)
    fig = drawn(csv_path)
    assert len(fig.axes) == 3 and fig.get_size_inches() * fig.dpi == pytest.approx(curves.SIZE)
    for ax, (_, series) in zip(fig.axes, curves.PANELS):
        lines = {line.get_label(): line for line in ax.get_lines()}
        assert sorted(lines) == sorted(s.label for s in series)
        for s in series:
            assert list(lines[s.label].get_xdata()) == log.epochs == [0, 1, 2, 3, 4]
            assert list(lines[s.label].get_ydata()) == log.columns[s.column]
            assert lines[s.label].get_linestyle() == ("--" if s.dashed else "-")
        values = [v for s in series for v in log.columns[s.column]]
        assert ax.get_ylim() == curves.value_range(values) and ax.get_ylim()[0] >= 0
        assert ax.get_xlim() == pytest.approx((-0.08, 4.08))
    assert [line.get_ydata()[0] for line in fig.axes[0].get_lines()] == [6.9, 6.8]
    assert fig.axes[2].get_ylim() == pytest.approx((0.0, 0.1 + 0.05 * (0.1 - 0.001)))
    assert fig.axes[2].get_xlabel() == "epoch" and fig.get_suptitle() == curves.title_of(log)


def test_a_different_val_loss_changes_the_loss_panel_and_nothing_else(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a = write_log(str(tmp_path / "a" / "main.csv"), FIVE_EPOCHS)
    b = write_log(str(tmp_path / "b" / "main.csv"), [(*r[:3], r[3] + 1.5, *r[4:]) for r in FIVE_EPOCHS])
    images = [np.asarray(Image.open(curves.write_report(p)).convert("RGB")) for p in (a, b)]
    boxes = plot_boxes(a)
    assert boxes == plot_boxes(b)

    def pixels(image, box):
        x0, y0, x1, y1 = box
        return image[y0:y1, x0:x1]

    loss, accuracy, lr = boxes
    assert (pixels(images[0], loss) != pixels(images[1], loss)).any(axis=2).sum() > 500  # a whole curve moved
    assert np.array_equal(pixels(images[0], accuracy), pixels(images[1], accuracy))
    assert np.array_equal(pixels(images[0], lr), pixels(images[1], lr))


# ---------------------------------------------------------------------------------------------------- no matplotlib

BLOCKED = """
import sys
sys.path.insert(0, {root!r})
sys.modules["matplotlib"] = None  # as if it were not installed: every import of it raises ImportError
from common.report import curves
curves.main(curves.get_args_parser().parse_args([{run_dir!r}]))
"""


def test_without_matplotlib_the_report_exits_2_in_one_line_naming_the_install(tmp_path):
    write_log(str(tmp_path / "main.csv"), FIVE_EPOCHS)
    done = subprocess.run([sys.executable, "-c", BLOCKED.format(root=ROOT, run_dir=str(tmp_path))],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.splitlines() == ["error: python -m common.report needs matplotlib, which is not installed: "
                                        "pip install -r requirements-extra.txt"]
    assert not (tmp_path / "main.png").exists()


def block_matplotlib(monkeypatch) -> None:
    """In this process, imports of matplotlib fail as if it were not installed (already-loaded submodules too)."""
    for name in [n for n in sys.modules if n == "matplotlib" or n.startswith("matplotlib.")]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, "matplotlib", None)


def test_without_matplotlib_test_py_skips_the_confusion_png_in_one_line(tmp_path, monkeypatch, capsys):
    block_matplotlib(monkeypatch)
    with pytest.raises(figures.MatplotlibMissing):
        figures.new_figure(100, 100, "a scatter plot")
    png = tmp_path / "confusion_matrix.png"
    assert figures.confusion_png(torch.tensor([[3, 1], [0, 4]]), ["cat", "dog"], str(png)) is False
    out = capsys.readouterr().out
    assert out.splitlines() == ["=> confusion_matrix.png not drawn: matplotlib is not installed (pip install -r "
                                "requirements-extra.txt); the confusion-matrix CSV has the same counts"]
    assert not png.exists()


# ---------------------------------------------------------------------------------------------------- safe writes

def test_a_png_that_cannot_be_written_exits_2_naming_it(tmp_path, capsys):
    csv_path = write_log(str(tmp_path / "main.csv"), FIVE_EPOCHS)
    out = str(tmp_path / "main.csv" / "curves.png")  # its folder is a file: the system refuses, as a read-only one
    with pytest.raises(SystemExit) as exit_info:
        curves.main(curves.get_args_parser().parse_args(["--csv", csv_path, "--out", out]))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: cannot write {out} (Not a directory)")


def test_a_write_failing_halfway_keeps_the_earlier_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "curves.png"
    path.write_bytes(b"earlier")

    def half_then_full(f) -> None:
        f.write(b"new but cut")
        raise OSError(28, "No space left on device")

    with pytest.raises(UserError, match=f"cannot write {path} \\(No space left on device\\)"):
        files.write_atomically(str(path), half_then_full)
    assert path.read_bytes() == b"earlier" and os.listdir(tmp_path) == ["curves.png"]


LIMITED = """
import resource, sys
sys.path.insert(0, {root!r})
resource.setrlimit(resource.RLIMIT_FSIZE, (4096, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
from common.report import curves
curves.main(curves.get_args_parser().parse_args([{run_dir!r}]))
"""


def test_a_full_disk_keeps_the_earlier_png_and_says_so_in_one_line(tmp_path):
    # A real failing write: the file size limit (RLIMIT_FSIZE) is far below a PNG's size, so the write fails with
    # EFBIG as a full disk fails with ENOSPC (Python ignores SIGXFSZ, which would otherwise kill the process).
    csv_path = write_log(str(tmp_path / "main.csv"), FIVE_EPOCHS[:3])
    earlier = (tmp_path / "main.png").read_bytes() if run(str(tmp_path)) else b""
    assert len(earlier) > 4096
    write_log(csv_path, FIVE_EPOCHS[3:])  # two more epochs: the new PNG would differ
    done = subprocess.run([sys.executable, "-c", LIMITED.format(root=ROOT, run_dir=str(tmp_path))],
                          capture_output=True, text=True, timeout=120)
    png = str(tmp_path / "main.png")
    assert done.returncode == 2 and done.stderr.splitlines() == [
        f"error: cannot write {png} (File too large); the earlier file is kept: free some disk space, choose a "
        "writable folder or a shorter name, and run it again."]
    assert (tmp_path / "main.png").read_bytes() == earlier
    assert sorted(os.listdir(tmp_path)) == ["main.csv", "main.png"]  # no temporary file left behind
    assert len(curves.read_log(csv_path).epochs) == 5 and run(str(tmp_path))  # with room again, it is redrawn
    assert (tmp_path / "main.png").read_bytes() != earlier


# ---------------------------------------------------------------------------------------------------- confusion matrix

def test_confusion_heatmap_shows_row_shares_counts_and_class_names(tmp_path):
    cm = torch.tensor([[8, 2, 0], [1, 5, 4], [0, 0, 0]])
    fig = figures.confusion_figure(cm, ["cat", "dog", "empty"])
    ax = fig.axes[0]
    shares = np.asarray(ax.images[0].get_array())
    assert np.allclose(shares, [[0.8, 0.2, 0.0], [0.1, 0.5, 0.4], [0.0, 0.0, 0.0]])  # an empty row stays 0
    assert [t.get_text() for t in ax.get_yticklabels()] == ["0 cat", "1 dog", "2 empty"]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["0 cat", "1 dog", "2 empty"]  # names on both axes
    assert sorted((round(t.get_position()[1]), round(t.get_position()[0]), t.get_text()) for t in ax.texts) == [
        (0, 0, "8"), (0, 1, "2"), (1, 0, "1"), (1, 1, "5"), (1, 2, "4")]
    assert ax.get_xlabel() == "predicted class" and ax.get_ylabel() == "true class"
    png = str(tmp_path / "confusion_matrix.png")
    assert figures.confusion_png(cm, ["cat", "dog", "empty"], png) is True
    with Image.open(png) as image:
        assert image.size == tuple(round(v) for v in fig.get_size_inches() * fig.dpi)
        assert image.width > 100 and image.height > 100


def test_confusion_heatmap_of_many_classes_has_no_text(tmp_path):
    cm = torch.eye(120, dtype=torch.long) * 3
    ax = figures.confusion_figure(cm, [f"class{i}" for i in range(120)]).axes[0]
    assert not ax.texts and np.allclose(np.asarray(ax.images[0].get_array()), np.eye(120))


# ---------------------------------------------------------------------------------------------------- contact sheet

def exif_rotated_jpeg(path: str) -> str:
    """A 60x36 JPEG whose EXIF says 'rotate 90 degrees clockwise to view' (orientation 6), with a bright left half."""
    pixels = np.zeros((36, 60, 3), np.uint8)
    pixels[:, :30] = (250, 40, 40)
    pixels[:, 30:] = (20, 20, 200)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(pixels).save(path, quality=95, exif=exif.tobytes())
    return path


def deep_png(path: str) -> str:
    """A 16-bit grayscale PNG with a ramp over the whole 0..65535 range."""
    ramp = np.linspace(0, 65535, 48 * 48).reshape(48, 48).astype(np.uint16)
    Image.fromarray(ramp).save(path)
    return path


def test_contact_sheet_tiles_show_images_as_load_rgb_decodes_them(tmp_path):
    paths = [exif_rotated_jpeg(str(tmp_path / "turned.jpg")), deep_png(str(tmp_path / "deep.png"))]
    size, sheet = 32, str(tmp_path / "sheet.png")
    assert figures.contact_sheet([(p, f"tile {i}") for i, p in enumerate(paths)], sheet, size=size) == 2
    grid = np.asarray(Image.open(sheet).convert("RGB"))
    assert grid.shape == (size + 4, 2 * size + 6, 3)  # make_grid: 2 px around and between tiles
    picture = size - figures.CAPTION_H  # the rows above the caption band
    for i, p in enumerate(paths):
        tile = grid[2:2 + picture, 2 + i * (size + 2):2 + i * (size + 2) + size]
        expected = np.asarray(transforms.CenterCrop(size)(transforms.Resize(size)(load_rgb(p))))[:picture]
        assert np.array_equal(tile, expected), p
        with Image.open(p) as raw:  # what the old decoder showed: unrotated, 16-bit values clipped to white
            naive = np.asarray(transforms.CenterCrop(size)(transforms.Resize(size)(raw.convert("RGB"))))[:picture]
        assert np.abs(naive.astype(int) - expected).mean() > 40, "the fixture must tell the two decoders apart"


def test_contact_sheet_skips_a_file_that_no_longer_decodes_and_writes_atomically(tmp_path):
    good = deep_png(str(tmp_path / "deep.png"))
    sheet = tmp_path / "sheet.png"
    sheet.write_bytes(b"earlier")
    assert figures.contact_sheet([(good, "a"), (str(tmp_path / "gone.png"), "b")], str(sheet), size=32) == 1
    assert Image.open(sheet).size == (32, 32)  # make_grid returns a lone tile unpadded
    assert figures.contact_sheet([(str(tmp_path / "gone.png"), "b")], str(sheet), size=32) == 0
    assert sorted(os.listdir(tmp_path)) == ["deep.png", "sheet.png"]
