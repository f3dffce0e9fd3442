"""The docs cannot drift from the code: every command in a shell block of README.md and docs/*.md names a script or
module that exists and whose parser takes the command's flags; every relative link reaches a file and, with an
#anchor, one of its headings; and the README stays a front page.

    python -m pytest -q tests/test_docs.py

Only the parsers run (``get_args_parser().parse_args(argv)``): no model, no data, no disk access, a few seconds.
Each command is one test case, named by its place (``docs/data.md:42``).

What is checked less, and why (keep this list short):
- ``pip``, ``python -c`` and other programs (``huggingface-cli``) are not checked: they run no script of ours.
- ``python -m`` of a module from outside the repository (``pytest``) is only imported: it has no get_args_parser().
- A command that the doc shows being refused (a ``$ `` line followed by an ``error:`` line) is imported and its
  parser built, not parsed: the refusal may come from argparse or from main(), and the doc shows it either way.
- ``...`` among a command's words stands for flags shown elsewhere; it is dropped before parsing.
- Shell variables are not expanded: ``$MASTER_ADDR:$MASTER_PORT`` parses as any other value would.
- Blocks marked ``text`` are recorded output, even where they show a ``$ `` prompt; they are not commands.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import io
import re
import shlex
import sys
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
README_MAX_BYTES = 15_000

SHELL_LANGS = {"bash", "sh", "shell", "console"}
COMMAND_WORDS = ("python", "python3", "torchrun", "srun", "pip", "pip3")
OPERATORS = {"&&", "||", ";", "|", "&"}
ENV_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
# Python's own options that take a value, before the script or -m (python -X importtime test.py ...).
PYTHON_OPTIONS_WITH_VALUE = {"-X", "-W"}


@dataclass(frozen=True)
class Command:
    doc: str  # e.g. docs/data.md
    line: int  # 1-based line of the command's first physical line
    text: str  # the command as the doc shows it (continuations joined, prompt and comment stripped)
    kind: str  # "script" or "module"
    target: str  # the script's path from the repository root, or the module's dotted name
    argv: tuple[str, ...]
    refused: bool  # the doc shows it being refused (the next output line starts with "error:")


def rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def fenced_blocks(path: Path) -> list[tuple[str, list[tuple[int, str]]]]:
    """Each fenced code block of a Markdown file as (language, [(line number, line), ...])."""
    blocks, lang, body = [], None, []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        fence = line.strip()
        if lang is None and fence.startswith("```"):
            lang, body = fence[3:].strip().lower(), []
        elif lang is not None and fence == "```":
            blocks.append((lang, body))
            lang = None
        elif lang is not None:
            body.append((number, line))
    return blocks


def starts_with_command(line: str) -> bool:
    words = line.removeprefix("$ ").split(maxsplit=1)
    return bool(words) and words[0] in COMMAND_WORDS


def shell_lines(lang: str, body: list[tuple[int, str]]) -> list[tuple[int, str, bool]]:
    """The command lines of a block as (line number, command, refused), or [] if the block is not shell.

    Shell blocks are those marked bash/sh/shell/console, and unmarked ones with a line that starts with a command word.
    Where a block shows prompts (``$ ``), only the prompted lines are commands; the rest is their output, and an output
    line starting with ``error:`` right after a command marks that command as one the doc shows being refused.
    Lines ending with a backslash are joined with the next."""
    if lang not in SHELL_LANGS and not (lang == "" and any(starts_with_command(text) for _, text in body)):
        return []
    prompted = any(text.startswith("$ ") for _, text in body)
    commands: list[tuple[int, str, bool]] = []
    pending: tuple[int, str] | None = None
    for index, (number, text) in enumerate(body):
        if pending is None:
            if prompted and not text.startswith("$ "):
                continue
            pending = (number, text.removeprefix("$ "))
        else:
            pending = (pending[0], pending[1] + " " + text.strip())
        if pending[1].endswith("\\"):
            pending = (pending[0], pending[1][:-1].rstrip())
            continue
        following = body[index + 1][1] if index + 1 < len(body) else ""
        refused = prompted and following.startswith("error:")
        commands.append((pending[0], pending[1], refused))
        pending = None
    return commands


def tokens(command: str) -> list[str]:
    """Shell words of one line, with quotes removed, a trailing ``# comment`` dropped and ``&&``, ``;``, ``|`` as
    words of their own. Variables are not expanded: ``$MASTER_ADDR`` stays a literal value, which a parser takes."""
    lexer = shlex.shlex(command, posix=True, punctuation_chars=";&|")
    lexer.whitespace_split = True
    return list(lexer)


def segments(words: list[str]) -> list[list[str]]:
    """The simple commands of a line split at ``&&``, ``||``, ``;`` and pipes, without leading ``VAR=value``."""
    out, current = [], []
    for word in [*words, ";"]:
        if word in OPERATORS:
            while current and ENV_ASSIGNMENT.match(current[0]):
                current.pop(0)
            if current:
                out.append(current)
            current = []
        else:
            current.append(word)
    return out


def python_call(words: list[str]) -> tuple[str, str, list[str]] | None:
    """(kind, target, argv) of a simple command that runs a project script or module, else None.

    ``python SCRIPT.py ...`` and ``python -m MODULE ...``; ``torchrun [its flags] SCRIPT.py ...``; ``srun [its
    flags] python|torchrun ...``. ``python -c`` and ``pip`` are not checked: they run no script of the project."""
    if not words:
        return None
    head, rest = words[0], words[1:]
    if head == "srun":
        for i, word in enumerate(rest):
            if word in ("python", "python3", "torchrun"):
                return python_call(rest[i:])
        return None
    if head == "torchrun":
        for i, word in enumerate(rest):
            if word.endswith(".py"):
                return "script", word, rest[i + 1:]
        return None
    if head not in ("python", "python3"):
        return None
    i = 0
    while i < len(rest):
        word = rest[i]
        if word == "-c":
            return None
        if word == "-m" and i + 1 < len(rest):
            return "module", rest[i + 1], rest[i + 2:]
        if word.endswith(".py"):
            return "script", word, rest[i + 1:]
        if not word.startswith("-"):
            return None
        i += 2 if word in PYTHON_OPTIONS_WITH_VALUE else 1
    return None


def collect_commands() -> list[Command]:
    found = []
    for path in DOCS:
        for lang, body in fenced_blocks(path):
            for number, text, refused in shell_lines(lang, body):
                words = tokens(text)
                text = shlex.join(words)  # as the shell sees it: the comment is gone
                for simple in segments(words):
                    call = python_call(simple)
                    if call:
                        kind, target, argv = call
                        found.append(Command(rel(path), number, text, kind, target, tuple(argv), refused))
    return found


def case_ids(commands: list[Command]) -> list[str]:
    """``docs/data.md:42``, with ``#2``, ``#3`` for further commands of the same line (``a && b``)."""
    seen: dict[str, int] = {}
    ids = []
    for command in commands:
        base = f"{command.doc}:{command.line}"
        seen[base] = seen.get(base, 0) + 1
        ids.append(base if seen[base] == 1 else f"{base}#{seen[base]}")
    return ids


COMMANDS = collect_commands()


@cache
def load_script(path: str):
    """The script as a module, without running its main (scripts are safe to import)."""
    spec = importlib.util.spec_from_file_location(f"docs_script_{Path(path).stem}", ROOT / path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def project_module(name: str):
    """The module that ``python -m name`` runs (a package's ``__main__``), or None for a module from outside the
    repository (``python -m pytest``), which is only checked to be importable."""
    spec = importlib.util.find_spec(name)
    assert spec is not None, f"no module named {name}"
    if spec.origin is None or ROOT not in Path(spec.origin).resolve().parents:
        return None
    if spec.submodule_search_locations is not None:
        name += ".__main__"
    return importlib.import_module(name)


def where(command: Command) -> str:
    return f"{command.doc}:{command.line}: `{command.text}`"


def test_the_docs_show_commands():
    assert len(COMMANDS) > 20, "the command finder found almost nothing; is the fence parsing broken?"


@pytest.mark.parametrize("command", COMMANDS, ids=case_ids(COMMANDS))
def test_documented_command_parses(command: Command):
    problem = parse_problem(command)
    if problem:
        pytest.fail(f"{where(command)}: {problem}", pytrace=False)


def parse_problem(command: Command) -> str | None:
    """Why the command would not start, or None: a missing script, a module that does not import, a parser that
    cannot be built or that refuses the command's flags."""
    if command.kind == "script":
        if not (ROOT / command.target).is_file():
            return f"there is no script {command.target}"
        module = load_script(command.target)
    else:
        try:
            module = project_module(command.target)
        except (ImportError, AssertionError) as exc:
            return f"module {command.target} does not import: {exc}"
        if module is None:
            return None
    if not hasattr(module, "get_args_parser"):
        return f"{command.target} has no get_args_parser()"
    try:
        parser = module.get_args_parser()
    except argparse.ArgumentError as exc:  # two flags of one name: the script's bug, named here
        return f"{command.target}'s get_args_parser() fails: {type(exc).__name__}: {exc}"
    if command.refused:
        return None  # the doc shows it refused; whether argparse or main() refuses it is not the docs' concern
    # "..." stands for flags the doc elides (shown elsewhere); the rest must parse.
    argv = [word for word in command.argv if word != "..."]
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            parser.parse_args(argv)
    except SystemExit as exc:
        said = stderr.getvalue().strip().splitlines() or ["(nothing on stderr)"]
        return f"the parser of {command.target} refuses it (exit {exc.code}): {said[-1]}"  # argparse's error: line
    return None


# Links: [text](target) and ![alt](target), outside code blocks and code spans.
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
CODE_SPAN = re.compile(r"`[^`]*`")


def prose_lines(path: Path) -> list[tuple[int, str]]:
    lines, in_block = [], False
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip().startswith("```"):
            in_block = not in_block
        elif not in_block:
            lines.append((number, line))
    return lines


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped (hyphens and underscores kept), spaces to
    hyphens."""
    text = CODE_SPAN.sub(lambda m: m.group(0)[1:-1], heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


@cache
def anchors(path: Path) -> frozenset[str]:
    """Every heading anchor of a file, with GitHub's ``-1``, ``-2`` for repeated headings."""
    seen: dict[str, int] = {}
    out = set()
    for _, line in prose_lines(path):
        match = re.match(r"#{1,6}\s+(.*)", line)
        if match:
            base = slug(match.group(1))
            count = seen.get(base, 0)
            out.add(base if count == 0 else f"{base}-{count}")
            seen[base] = count + 1
    return frozenset(out)


@pytest.mark.parametrize("path", DOCS, ids=[rel(p) for p in DOCS])
def test_relative_links_resolve(path: Path):
    broken = []
    for number, line in prose_lines(path):
        for target in LINK.findall(CODE_SPAN.sub("", line)):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target):
                continue  # https:, mailto:: not checked here
            file_part, _, anchor = target.partition("#")
            linked = (path.parent / file_part).resolve() if file_part else path
            if not linked.exists():
                broken.append(f"{rel(path)}:{number}: {target}: no file {file_part}")
            elif anchor and linked.suffix == ".md" and anchor not in anchors(linked):
                broken.append(f"{rel(path)}:{number}: {target}: no heading #{anchor} in {rel(linked)}")
    if broken:
        pytest.fail("broken links:\n" + "\n".join(broken), pytrace=False)


def test_readme_is_a_front_page():
    size = len((ROOT / "README.md").read_bytes())
    assert size <= README_MAX_BYTES, f"README.md is {size} bytes; move depth into docs/ (at most {README_MAX_BYTES})"
