"""Command lines found by fuzzing every sub-command (each option alone and in pairs with hostile
values: empty, '--', control characters, over-long names, unicode, ...): each was a traceback or
a silently wrong reading. Now one `error:` line and exit 2, before anything is created.

Run in this process (`cli.main`), as test_absurd_numbers.py; the broken pipe in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from entitysam import cli

LONG = "x" * 300  # one name over the 255 bytes of Linux and macOS: stat() raises ENAMETOOLONG


def one_error(capsys, argv, rc=2) -> str:
    """cli.main(argv) returns `rc` with exactly one `error:` line (returned) and no traceback; an
    exception escaping main (a traceback for a user) fails the test as itself."""
    code = cli.main([str(a) for a in argv])
    captured = capsys.readouterr()
    assert code == rc, (code, captured.err)
    assert "Traceback" not in captured.err
    lines = [line for line in captured.err.splitlines() if line.startswith("error:") or ": error:" in line]
    assert len(lines) == 1, captured.err
    return lines[0]


# `--option=--`: Python 3.11's argparse gave the option the value [] without calling its type:
# `metrics --workers=--` and `demo --size=--` were tracebacks, `export --class-id=--` exit 1.
DASHES = [
    ["metrics", "p", "g", "g.json", "--workers=--"],
    ["metrics", "p", "g", "g.json", "--json=--"],
    ["demo", "-o", "{tmp}/out", "--size=--"],
    ["demo", "--output=--"],
    ["export", "{tmp}/r", "--format", "mots", "-o", "{tmp}/out", "--class-id=--"],
    ["export", "{tmp}/r", "--format", "ytvis", "-o", "{tmp}/out", "--video-id=--"],
    ["segment", "{tmp}/in", "-o", "{tmp}/out", "--stride=--"],
    ["segment", "{tmp}/in", "-o", "{tmp}/out", "--batch=--"],
    ["segment", "{tmp}/in", "--output=--"],
    ["eval", "vipseg", "--data-root", "{tmp}", "-o", "{tmp}/out", "--workers=--"],
    ["view", "{tmp}/r", "--port=--"],
    ["train", "--config=--"],
]


@pytest.mark.parametrize("argv", DASHES, ids=" ".join)
def test_an_option_given_dashes_is_missing_its_value(tmp_path, capsys, monkeypatch, argv):
    monkeypatch.chdir(tmp_path)
    line = one_error(capsys, [a.format(tmp=tmp_path) for a in argv])
    assert line.endswith(f"argument {argv[-1].split('=')[0]}: expected one argument") or \
        line.endswith("expected one argument"), line
    assert sorted(os.listdir(tmp_path)) == []


# An empty path: "" is the current folder for pathlib and "no value" for `if path:`; `segment
# --checkpoint ''` fetched the published model, `train --config ''` trained the defaults,
# `export -o ''` answered ". already exists", `view --host ''` listened on every interface.
EMPTY = [
    (["segment", "{tmp}/in", "-o", "{tmp}/out", "--checkpoint", ""], "argument --checkpoint: expected a path"),
    (["segment", "", "-o", "{tmp}/out"], "argument INPUT: expected a path"),
    (["segment", "{tmp}/in", "-o", " "], "argument -o/--output: expected a path"),
    (["segment", "{tmp}/in", "-o", "{tmp}/out", "--summary", ""], "argument --summary: expected a path"),
    (["train", "--config", "", "--print-config"], "argument --config/-c: expected a path"),
    (["export", "{tmp}/r", "--format", "mots", "-o", ""], "argument -o/--output: expected a path"),
    (["export", "", "--format", "mots", "-o", "{tmp}/out"], "argument RESULT_DIR: expected a path"),
    (["demo", "-o", ""], "argument -o/--output: expected a path"),
    (["download", "vit-s", "--cache-dir", ""], "argument --cache-dir: expected a path"),
    (["metrics", "", "g", "g.json"], "argument pred_dir: expected a path"),
    (["metrics", "p", "g", "g.json", "--json", ""], "argument --json: expected a path"),
    (["eval", "vipseg", "--data-root", "", "-o", "{tmp}/out"], "argument --data-root: expected a path"),
    (["eval", "vipseg", "--data-root", "{tmp}", "-o", "{tmp}/out", "--checkpoint", "\t"],
     "argument --checkpoint: expected a path"),
    (["view", "", "--port", "0"], "argument RESULT_DIR: expected a path"),
    (["view", "{tmp}/r", "--host", ""], "argument --host: expected an address, got ''"),
    (["view", "{tmp}/r", "--host", "ü\u202e"], "argument --host: expected a host name or IP address"),
    (["view", "{tmp}/r", "--host", "a b"], "argument --host: expected a host name or IP address"),
]


@pytest.mark.parametrize("argv,message", EMPTY, ids=[" ".join(map(repr, a)) for a, _ in EMPTY])
def test_an_empty_path_or_host_is_refused(tmp_path, capsys, monkeypatch, argv, message):
    monkeypatch.chdir(tmp_path)
    assert message in one_error(capsys, [a.format(tmp=tmp_path) for a in argv])
    assert sorted(os.listdir(tmp_path)) == []


# A path with a name longer than the system takes: `Path.exists()` and friends raise
# ENAMETOOLONG (Python 3.11 swallows only "not found"): tracebacks in train, metrics, view, demo.
LONG_NAMES = [
    ["train", "--config", LONG],
    ["train", "--config", "vit-s-stage1", f"data.root={LONG}"],
    ["metrics", LONG, "g", "g.json"],
    ["metrics", "p", "g", "g.json", "--json", LONG],
    ["view", LONG],
    ["demo", "-o", f"{LONG}/y"],
]


@pytest.mark.parametrize("argv", LONG_NAMES, ids=lambda a: " ".join(x[:12] for x in a))
def test_an_over_long_file_name_is_one_line(tmp_path, capsys, monkeypatch, argv):
    monkeypatch.chdir(tmp_path)
    line = one_error(capsys, argv)
    assert line.startswith(f"error: file name too long: '{'x' * 40}'... (300 characters): "), line
    assert sorted(os.listdir(tmp_path)) == []


def test_a_closed_pipe_is_no_traceback():
    """`entitysam train --print-config | head -1`: the reader closes the pipe early."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen([sys.executable, "-m", "entitysam", "train", "--config", "vit-s-stage1",
                             "--print-config"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    proc.stdout.close()  # before it writes: its first write fails with EPIPE
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 1, err
    assert "Traceback" not in err and "Exception ignored" not in err, err
    assert err.strip() == "error: the output was cut short: its reader closed the pipe (broken pipe)"


TEXT = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=40)
SEGMENT_OPTIONS = ["--start", "--end", "--stride", "--max-frames", "--fps", "--max-pixels", "--save", "--shard",
                   "--summary", "--checkpoint", "--delay", "--queue", "--threads", "--batch", "--save-logits"]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(option=st.sampled_from(SEGMENT_OPTIONS), value=TEXT)
def test_any_text_value_of_a_segment_option_is_parsed_or_refused(tmp_path_factory, option, value):
    """Whatever text an option gets, segment refuses it with its usual codes (the input does not
    exist, so an accepted value ends in a failed video, 1) and never raises."""
    tmp = tmp_path_factory.mktemp("any")
    out = tmp / "out"
    code = cli.main(["segment", str(tmp / "absent.mp4"), "-o", str(out), "--checkpoint", str(tmp / "absent.pth"),
                     "-q", f"{option}={value}"])
    assert code in (1, 2)
    assert not out.exists() or not any(out.iterdir())


# A name that drives a terminal: ESC ] 0 ; ... BEL sets its title, ESC [ 2 J clears it, U+202E
# reverses the text after it. Error lines quote the names users give, and printed them as they were.
HOSTILE_NAME = "\x1b]0;owned\x07\x1b[2Jclip\u202e4pm.exe"
TERMINAL = [
    (["view", "{name}"], 2),
    (["export", "{name}", "--format", "ytvis", "-o", "{tmp}/x.json"], 2),
    (["metrics", "{name}", "{name}", "{name}.json"], 2),
    (["segment", "{name}", "-o", "{tmp}/out", "--checkpoint", "{tmp}/none.pth"], 1),
    (["eval", "vipseg", "--data-root", "{name}", "-o", "{tmp}/eval"], 2),
    (["train", "--config", "{name}.yaml"], 2),
]


@pytest.mark.parametrize("argv, rc", TERMINAL, ids=[a[0] for a, _ in TERMINAL])
def test_a_name_with_terminal_control_characters_is_shown_escaped(tmp_path, capsys, argv, rc):
    """The error line shows such a name with its control characters escaped (`\\x1b`), whatever
    the command; nothing reaches the terminal to obey."""
    name = str(tmp_path / HOSTILE_NAME)
    line = one_error(capsys, [a.format(name=name, tmp=tmp_path) for a in argv], rc=rc)
    assert not any(c in line for c in "\x1b\x07\u202e"), repr(line)
    assert "\\x1b]0;owned\\x07" in line, line


@pytest.mark.parametrize("argv, rc", TERMINAL, ids=[a[0] for a, _ in TERMINAL])
def test_a_name_with_a_line_break_stays_on_one_error_line(tmp_path, capsys, argv, rc):
    """A newline in a name the message quotes split the error in two lines, the second one
    looking like output of its own; it is shown as `\\n`. (Indented lines, a list of remedies,
    are kept: test_hub.py.)"""
    name = str(tmp_path / "clip\nerror: fake line")
    assert cli.main([a.format(name=name, tmp=tmp_path) for a in argv]) == rc
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "clip\\nerror: fake line" in err, err
