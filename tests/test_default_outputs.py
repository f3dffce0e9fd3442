"""Outputs go where the user said, or under runs/: no default writes into the current folder (often the checkout)."""
from __future__ import annotations

import os

import pytest

from inprocess import load_script


@pytest.mark.parametrize(("script", "default"), [("test.py", "runs/test"), ("evaluation/compare.py", "runs/compare")])
def test_default_output_dir_is_under_runs(script, default):
    parser = load_script(script).get_args_parser()
    assert parser.get_default("output_dir") == os.path.join(*default.split("/"))
    assert f"default: {default}" in parser.format_help().replace("\n", " ").replace("  ", " ")
