"""The README's command lines are the command's: every option it shows for an `entitysam` command
exists in that command's parser, and every option of every parser is documented somewhere
(README.md or docs/). A stale README line is a defect a user pays for.

Nothing runs: the parsers are built from `entitysam.cli` and the modules it delegates to, and the
Markdown is read as text. Options are found in fenced code blocks and in inline code spans:

* a command span or code line: `entitysam segment clip.mp4 -o out --online` (also
  `python -m entitysam segment`, `-m entitysam.train`): its options belong to that command;
* a bare option span, `--flag ...`: to the command named just before it (demo `--size`), else
  to the command(s) of the section it is in (the segment options table, say) for the converse
  check, while it only has to be an option of some command (or of another program the README
  names in passing, FOREIGN) to pass, since prose refers across sections ("made with `--start`").
"""

from __future__ import annotations

import argparse
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import REPO

README = REPO / "README.md"
DOCS = sorted((REPO / "docs").glob("*.md"))

# The commands' names as typed ("": `entitysam --version`), and what a section of the README (by
# its heading) documents.
COMMANDS = ("", "segment", "demo", "view", "export", "download", "metrics", "train", "eval vipseg")
FIRST_WORDS = {c.split()[0] for c in COMMANDS if c}
SECTIONS = {
    "First run": ("demo",),
    "Segment a video": ("segment",),
    "Online mode": ("segment",),
    "Batches on many GPUs and machines": ("segment",),
    "Sharded batches: `--shard`": ("segment",),
    "The summary": ("segment",),
    "10,000 videos on a Slurm cluster (array job)": ("segment",),
    "One 8-GPU node with torchrun": ("segment",),
    "On a Ray cluster": ("segment",),
    "Review and correct": ("view", "export"),
    "The viewer": ("view",),
    "Edits, revisions and exports": ("export",),
    "Models and downloads": ("download",),
    "Metrics": ("metrics",),
    "Evaluate on VIPSeg": ("eval vipseg",),
    "Training": ("train",),
}

# Whole files that document one command (their sections are not in SECTIONS).
FILES = {"docs/training.md": ("train",)}

# Options of other programs that bare spans show (the command lines themselves are recognised by
# their program's name): torchrun's and sbatch's, as the batch sections use them.
FOREIGN = {
    "--nproc_per_node": "torchrun",
    "--nnodes": "torchrun",
    "--node_rank": "torchrun",
    "--rdzv_endpoint": "torchrun",
    "--array": "sbatch (Slurm array jobs)",
}

# Options whose `--help` is their documentation, each with its reason (argparse's own -h/--help
# is on every parser; `entitysam --help` lists the commands and says how to get theirs).
HELP_ONLY = {
    ("*", "-h"): "argparse's own help option, on every command",
    ("*", "--help"): "argparse's own help option, on every command",
}

OPTION = re.compile(r"^--?[A-Za-z][A-Za-z0-9_-]*$")
SPAN = re.compile(r"(?<!`)`([^`]+)`(?!`)")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*$")
STOP = {"|", "||", "&&", ";", "&", "--"}  # where a command line's options end (shell, or argparse's `--`)


@dataclass(frozen=True)
class Mention:
    """One option as a document shows it, for `commands` (None: no command in particular); a
    `strict` one must be an option of one of them, another only of some command."""
    option: str
    commands: tuple[str, ...] | None
    strict: bool
    where: str  # file:line
    text: str  # the code line or span it is in
    value: str | None = None  # the word after it: its value, or a metavar

    def __str__(self) -> str:
        return f"{self.where}: {self.option} ({self.text.strip()[:100]!r})"


def build_parsers() -> dict[str, argparse.ArgumentParser]:
    """Every command's parser, built as `entitysam` builds it, with nothing run."""
    from entitysam import argtypes, cli
    from entitysam.cli import eval as eval_cli, metrics, view
    from entitysam.train import cli as train_cli

    top = cli.build_parser()
    parsers = {name: p for name, p in subparsers(top).items() if name not in cli.DELEGATED}
    parsers[""] = top
    parsers["view"] = view.build_parser()
    parsers["train"] = train_cli.build_parser("entitysam train")
    parsers["eval vipseg"] = subparsers(eval_cli.build_parser())["vipseg"]

    class Built(Exception):
        """Carries the parser `entitysam metrics` builds inside its main() out before it parses."""

    def stop_at_parse(self, *args, **kwargs):
        raise Built(self)

    saved = argtypes.ArgumentParser.parse_args
    argtypes.ArgumentParser.parse_args = stop_at_parse
    try:
        metrics.main([])
    except Built as built:
        parsers["metrics"] = built.args[0]
    finally:
        argtypes.ArgumentParser.parse_args = saved
    return parsers


def subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def typed(command: str) -> str:
    """The command as a user types it."""
    return f"entitysam {command}".rstrip()


def options_of(parser: argparse.ArgumentParser) -> set[str]:
    return {s for a in parser._actions for s in a.option_strings}


def clean(token: str) -> str:
    """An option as written in running text or a synopsis: `[--labels]`, `--port=6379`, `-q,`."""
    return token.strip("[](),.;:'\"").split("=", 1)[0]


def with_values(tokens: list[str]) -> list[tuple[str, str | None]]:
    """Each option of `tokens` with the word after it (None: none, or another option): the value
    or metavar it is shown with. `--port=6379` is (--port, 6379); a table's `a\\|b` is `a|b`."""
    out = []
    for i, token in enumerate(tokens):
        option = clean(token)
        if not OPTION.match(option):
            continue
        value = token.split("=", 1)[1] if "=" in token else (tokens[i + 1] if i + 1 < len(tokens) else None)
        value = None if value is None or OPTION.match(clean(value)) else value.replace("\\|", "|").strip("[](),;'\"")
        out.append((option, value or None))
    return out


def command_options(tokens: list[str]) -> list[tuple[str, list[tuple[str, str | None]]]]:
    """(command, its options with their values) for each `entitysam <command>` in a tokenised
    command line."""
    found = []
    for i, token in enumerate(tokens):
        if token == "entitysam.train" and i and tokens[i - 1] == "-m":
            command, rest = "train", tokens[i + 1:]
        elif token == "entitysam" and i + 1 < len(tokens):
            name = tokens[i + 1]
            if name == "eval" and i + 2 < len(tokens) and tokens[i + 2] == "vipseg":
                command, rest = "eval vipseg", tokens[i + 3:]
            elif name in COMMANDS:
                command, rest = name, tokens[i + 2:]
            elif OPTION.match(clean(name)):
                command, rest = "", tokens[i + 1:]
            else:
                continue
        else:
            continue
        end = next((i for i, w in enumerate(rest) if w in STOP or w.startswith("#") or w in ("entitysam", "-m")),
                   len(rest))
        found.append((command, with_values(rest[:end])))
    return found


def logical_lines(block: list[tuple[int, str]]) -> list[tuple[int, str]]:
    """A fenced block's lines with shell continuations (a trailing backslash) joined."""
    out, start, parts = [], None, []
    for number, line in block:
        start = number if start is None else start
        if line.rstrip().endswith("\\"):
            parts.append(line.rstrip()[:-1])
            continue
        out.append((start, " ".join(parts + [line])))
        start, parts = None, []
    if parts:
        out.append((start, " ".join(parts)))
    return out


def mentions(path: Path, root: Path = REPO) -> list[Mention]:
    """Every option a Markdown file shows, with the command(s) it is shown for (named from `root`)."""
    lines = path.read_text(encoding="utf-8").splitlines()
    name = str(path.relative_to(root))
    found: list[Mention] = []
    headings: list[tuple[int, str]] = []  # (line index, heading) outside code blocks
    prose = list(lines)  # the text with code blocks blanked, so that spans keep their line numbers
    fence: list[tuple[int, str]] | None = None
    for i, line in enumerate(lines):
        if line.lstrip().startswith("```"):
            if fence is not None:
                found += code_mentions(fence, name)
            fence = [] if fence is None else None
            prose[i] = ""
        elif fence is not None:
            fence.append((i + 1, line))
            prose[i] = ""
        elif match := HEADING.match(line):
            headings.append((i, match.group(2)))
    return found + span_mentions("\n".join(prose), name, headings)


def code_mentions(block: list[tuple[int, str]], name: str) -> list[Mention]:
    """The options of the `entitysam` command lines of a fenced code block."""
    return [Mention(o, (command,), True, f"{name}:{number}", code, v) for number, code in logical_lines(block)
            for command, options in command_options(code.split()) for o, v in options]


def span_mentions(text: str, name: str, headings: list[tuple[int, str]]) -> list[Mention]:
    """The options of the inline code spans of `text` (Markdown without its code blocks)."""
    found = []
    for match in SPAN.finditer(text):
        span, start = match.group(1), match.start()
        number = text.count("\n", 0, start) + 1
        where = f"{name}:{number}"
        tokens = span.split()
        if len(tokens) > 1 and tokens[0] in FIRST_WORDS:
            tokens = ["entitysam", *tokens]  # `segment --overwrite`, `metrics --json FILE`, `eval vipseg ...`
        if any(t in ("entitysam", "entitysam.train") for t in tokens):
            found += [Mention(o, (command,), True, where, span, v) for command, options in command_options(tokens)
                      for o, v in options]
        elif tokens and OPTION.match(clean(tokens[0])):
            named = named_before(text[:start])
            commands = named or section_commands(headings, number - 1) or FILES.get(name)
            found += [Mention(o, commands, named is not None, where, span, v) for o, v in with_values(tokens)]
    return found


def named_before(text: str) -> tuple[str, ...] | None:
    """The command named right before a bare option span: demo `--size`, eval `--workers`."""
    words = text[-30:].replace("`", " ").split()
    if not words:
        return None
    if words[-1] == "vipseg" or words[-1] == "eval":
        return ("eval vipseg",)
    return (words[-1],) if words[-1] in COMMANDS else None


def section_commands(headings: list[tuple[int, str]], index: int) -> tuple[str, ...] | None:
    """The commands the innermost section around line `index` documents (None: not one command's)."""
    before = [h for i, h in headings if i <= index]
    return SECTIONS.get(before[-1]) if before else None


PARSERS = build_parsers()
README_MENTIONS = mentions(README)
ALL_MENTIONS = README_MENTIONS + [m for doc in DOCS for m in mentions(doc)]


def unknown_options(found: list[Mention], parsers: dict[str, argparse.ArgumentParser]) -> list[str]:
    """The mentions whose option is not one of its command's (for a loose one: not of any command's
    nor a FOREIGN program's)."""
    every = set().union(*(options_of(p) for p in parsers.values()), FOREIGN)
    bad = []
    for m in found:
        if not m.strict:
            if m.option not in every:
                bad.append(f"{m}: no entitysam command has {m.option}")
        elif not any(m.option in options_of(parsers[c]) for c in m.commands):
            bad.append(f"{m}: `{' or '.join(typed(c) for c in m.commands)}` has no option {m.option}")
    return bad


def wrong_choices(found: list[Mention], parsers: dict[str, argparse.ArgumentParser]) -> list[str]:
    """The mentions that show an option of fixed choices with a value it refuses (`--device gpu`),
    or alternatives one of which it refuses (`--device auto|gpu`). Fewer than all is no error:
    "with `--device auto|cuda`" names the values a sentence is about."""
    bad = []
    for m in found:
        if not m.commands or not m.value or m.value != m.value.lower() or m.value.startswith(("<", "$", "{")):
            continue  # no value, or a metavar (N, DIR, WxH), a placeholder or a shell variable
        for command in m.commands:
            action = next((a for a in parsers[command]._actions if m.option in a.option_strings), None)
            if action is None or not action.choices:
                continue
            choices = [str(c) for c in action.choices]
            shown = m.value.split("|")
            if not set(shown) <= set(choices):
                bad.append(f"{m}: `{typed(command)} {m.option}` takes {'|'.join(choices)}, not {m.value}")
    return bad


def undocumented(found: list[Mention], parsers: dict[str, argparse.ArgumentParser]) -> list[str]:
    """The parsers' options that no mention documents for their command (nor the allow-list)."""
    shown = {(c, m.option) for m in found if m.commands for c in m.commands}
    missing = []
    for command, parser in parsers.items():
        for action in parser._actions:
            names = action.option_strings
            if not names or any((c, n) in HELP_ONLY for n in names for c in (command, "*")):
                continue
            if not any((command, n) in shown for n in names):
                missing.append(f"`{typed(command)}` option {'/'.join(names)} is mentioned nowhere in "
                               "README.md or docs/ (document it, or allow-list it in HELP_ONLY with the reason)")
    return missing


def test_the_parsers_are_every_command():
    assert set(PARSERS) == set(COMMANDS)
    assert {"--online", "--batch", "-o"} <= options_of(PARSERS["segment"])


def test_every_option_the_readme_shows_exists():
    bad = unknown_options(README_MENTIONS, PARSERS)
    assert not bad, "README.md shows options the commands do not have:\n" + "\n".join(bad)


def test_every_command_line_in_docs_uses_existing_options():
    # (their bare option spans are other programs' as often as not: benchmarks/gpu.py's, srun's)
    bad = unknown_options([m for doc in DOCS for m in mentions(doc) if m.strict], PARSERS)
    assert not bad, "docs/ shows options the commands do not have:\n" + "\n".join(bad)


def test_every_value_shown_for_an_option_of_fixed_choices_is_one():
    bad = wrong_choices(ALL_MENTIONS, PARSERS)
    assert not bad, "\n".join(bad)


def test_every_option_of_every_command_is_documented():
    missing = undocumented(ALL_MENTIONS, PARSERS)
    assert not missing, "\n".join(missing)


def test_the_checker_finds_a_bogus_option_and_an_undocumented_one(tmp_path):
    doc = tmp_path / "README.md"
    doc.write_text("## Segment a video\n\n```\nentitysam segment clip.mp4 -o out \\\n  --no-such-flag\n```\n\n"
                   "`entitysam view RESULT [--port N]`, demo `--frames N`, and `--stride 2`, `--bogus`.\n",
                   encoding="utf-8")
    found = mentions(doc, root=tmp_path)
    assert {(m.option, m.commands, m.strict) for m in found} == {
        ("-o", ("segment",), True), ("--no-such-flag", ("segment",), True), ("--port", ("view",), True),
        ("--frames", ("demo",), True), ("--stride", ("segment",), False), ("--bogus", ("segment",), False)}
    bad = unknown_options(found, PARSERS)
    assert len(bad) == 2 and "`entitysam segment` has no option --no-such-flag" in bad[0] and "--bogus" in bad[1]
    missing = undocumented(found, PARSERS)
    assert any(line.startswith("`entitysam view` option --host is mentioned nowhere") for line in missing)
    assert not any("option --port " in line for line in missing)


@pytest.mark.parametrize("span, expected", [
    ("entitysam segment a.mp4 -o out --online | head", [("segment", [("-o", "out"), ("--online", None)])]),
    ("entitysam eval vipseg --data-root D --output O -- -x",
     [("eval vipseg", [("--data-root", "D"), ("--output", "O")])]),
    ("torchrun --nproc_per_node 4 -m entitysam.train --config c", [("train", [("--config", "c")])]),
    ("python benchmarks/online.py --frames 3", []),
    ("entitysam demo [-o DIR] [--seed S] [--labels] # --not-this",
     [("demo", [("-o", "DIR"), ("--seed", "S"), ("--labels", None)])]),
    ("entitysam view R --port=0 --host 127.0.0.1", [("view", [("--port", "0"), ("--host", "127.0.0.1")])]),
    ("entitysam --version; entitysam wrote it", [("", [("--version", None)])]),
])
def test_command_lines_are_tokenised(span, expected):
    assert command_options(span.split()) == expected


def test_a_wrong_or_incomplete_list_of_choices_is_found():
    found = [Mention("--device", ("segment",), True, "x:1", "", "auto|cpu|cuda|mps"),
             Mention("--device", ("segment",), True, "x:2", "", "cpu|gpu"),
             Mention("--dtype", ("segment",), True, "x:3", "", "auto|float64"),
             Mention("--metric", ("metrics",), False, "x:4", "", "veq"),
             Mention("--metric", ("metrics",), False, "x:5", "", "NAME")]
    bad = wrong_choices(found, PARSERS)
    assert [line.split(":")[1] for line in bad] == ["2", "3"]
    assert "`entitysam segment --device` takes auto|cpu|cuda|mps, not cpu|gpu" in bad[0]
