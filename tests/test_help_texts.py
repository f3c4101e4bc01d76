"""Every command's --help names the command as it is typed and explains every option."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

COMMANDS = [["segment"], ["demo"], ["view"], ["export"], ["download"], ["metrics"], ["eval", "vipseg"], ["train"]]
OPTION = re.compile(r"^  (-\S.*?)(?:\s{2,}(\S.*))?$")


def undocumented_options(help_text: str) -> list[str]:
    """The options of an argparse help text that have no description (neither after the option
    on its line nor on the lines below it)."""
    lines = help_text.splitlines()
    missing = []
    for i, line in enumerate(lines):
        match = OPTION.match(line)
        if not match or match.group(2):
            continue
        below = lines[i + 1] if i + 1 < len(lines) else ""
        if not (below.startswith(" " * 8) and below.strip()):
            missing.append(match.group(1).split()[0].rstrip(","))
    return missing


def test_the_checker_finds_an_option_without_help():
    text = "options:\n  -h, --help  show this\n  --metric {all,veq}\n  --json FILE  write it\n"
    assert undocumented_options(text) == ["--metric"]


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_help_names_the_command_and_explains_every_option(command):
    out = subprocess.run([sys.executable, "-m", "entitysam", *command, "--help"], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(f"usage: entitysam {' '.join(command)} "), out.stdout.splitlines()[0]
    assert undocumented_options(out.stdout) == []


def test_an_unknown_argument_is_said_by_the_command_with_a_hint_for_a_dashed_file(tmp_path, monkeypatch, capsys):
    from entitysam import cli

    monkeypatch.chdir(tmp_path)
    (tmp_path / "-clip.mp4").write_bytes(b"")
    assert cli.main(["segment", "-o", "out", "-clip.mp4"]) == 2
    err = capsys.readouterr().err
    assert "usage: entitysam segment " in err
    assert err.rstrip().endswith("entitysam segment: error: unrecognized arguments: -clip.mp4 (-clip.mp4 is a file: "
                                 "put -- before the inputs, or write ./-clip.mp4)")
    assert not (tmp_path / "out").exists()
    assert cli.main(["segment", "-o", "out", "--no-such-flag"]) == 2
    assert capsys.readouterr().err.rstrip().endswith("entitysam segment: error: unrecognized arguments: --no-such-flag")
