"""Every command's --help names the command as it is typed and explains every option."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

COMMANDS = [["segment"], ["demo"], ["view"], ["export"], ["download"], ["metrics"], ["eval", "vipseg"]]
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
