"""A progress display draws a tqdm bar only on a terminal; written to a log (a file, a pipe) it prints plain lines
now and then and never a carriage return: common.terminal.Ticker, and the converter and the training meters that
use its rule."""
from __future__ import annotations

import io
import sys

from common import terminal
from common.data import convert
from common.report.progress import AverageMeter, Progress
from tests.conftest import make_image_folder


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_ticker_on_a_log_prints_plain_lines_without_carriage_returns(capsys):
    log = io.StringIO()
    with terminal.Ticker(20, "to shards", unit="img", stream=log) as ticker:
        for _ in range(20):
            ticker.update(1)
        ticker.write("a result line")
    out = capsys.readouterr()
    lines = out.out.splitlines()
    assert "\r" not in log.getvalue() + out.out + out.err and log.getvalue() == ""
    assert lines[0].startswith("to shards: 2/20 img (10%), ") and lines[-2].startswith("to shards: 20/20 img (100%)")
    assert len(lines) == 11 and lines[-1] == "a result line"  # a line per tenth of the total, then the result


def test_a_ticker_on_a_terminal_draws_a_tqdm_bar(capsys):
    screen = FakeTerminal()
    with terminal.Ticker(5, "models", unit="models", stream=screen) as ticker:
        ticker.update(5)
    assert "\r" in screen.getvalue() and "5/5" in screen.getvalue()
    assert capsys.readouterr().out == ""


def test_closed_or_plain_streams_are_not_terminals():
    closed = io.StringIO()
    closed.close()  # its isatty raises ValueError
    assert terminal.is_terminal(FakeTerminal()) and not terminal.is_terminal(io.StringIO())
    assert not terminal.is_terminal(closed) and not terminal.is_terminal(object())


def test_the_converter_writes_no_carriage_return_to_a_log(tmp_path, capsys):
    folder = make_image_folder(str(tmp_path / "images"), 3, 2, classes=((200, 30, 30), (30, 30, 200)), size=(16, 16))
    assert not sys.stderr.isatty()  # pytest's capture stands for a log file
    convert.main(convert.get_args_parser().parse_args([folder, str(tmp_path / "out"), "--to", "shards"]))
    out = capsys.readouterr()
    assert "\r" not in out.out + out.err
    assert "to shards: 10/10 img (100%)" in out.out


def test_the_training_meters_use_the_same_rule(capsys, monkeypatch):
    monkeypatch.setattr(sys, "stderr", FakeTerminal())
    shown = Progress(3, [AverageMeter("Loss")], "Epoch: [0]", print_freq=1, enabled=True)
    assert shown.bar is not None and shown.plain is None
    shown.close()
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    logged = Progress(3, [AverageMeter("Loss")], "Epoch: [0]", print_freq=1, enabled=True)
    assert logged.bar is None and logged.plain is not None
