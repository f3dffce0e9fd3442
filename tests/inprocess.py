"""Call a script's ``main()`` inside the test process (seconds faster than a fresh interpreter), capturing stdout."""
from __future__ import annotations

import contextlib
import importlib.util
import io
import os
from types import ModuleType
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_script(name: str) -> ModuleType:
    """Import ``ROOT/name`` under a private module name (``test.py`` would otherwise clash with the stdlib)."""
    spec = importlib.util.spec_from_file_location(f"script_{name[:-3]}", os.path.join(ROOT, name))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def call_main(script: str, *argv: str) -> tuple[Any, str]:
    """``main(get_args_parser().parse_args(argv))`` of ``script``; returns its result and what it printed."""
    module = load_script(script)
    args = module.get_args_parser().parse_args(list(argv))
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        result = module.main(args)
    return result, out.getvalue()
