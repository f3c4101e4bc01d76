"""Where `entitysam metrics --json FILE` writes (README "Metrics", "Reliability"): never over a
file it did not write, atomically, never waiting for ever on a pipe, and /dev/stdout, /dev/fd/N
and /dev/null still work."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

import entitysam.eval.metrics as metrics
from entitysam.cli import metrics as metrics_cli
from entitysam.data.synthetic.vipseg import make_synthetic_dataset

SRC = str(Path(__file__).resolve().parents[1] / "src")


@pytest.fixture(scope="module")
def ds(tmp_path_factory):
    return make_synthetic_dataset(tmp_path_factory.mktemp("json-out"), num_videos=2, num_frames=3, width=64,
                                  height=48, seed=5)


def _args(ds, *extra):
    return [str(ds.pred_dir), str(ds.gt_dir), str(ds.gt_json), "--workers", "1", *map(str, extra)]


def _one_error(capsys, words):
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and words in err, err


def _entitysam(*argv, stdout, timeout=60):
    env = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "entitysam", "metrics", *argv], stdout=stdout,
                          stderr=subprocess.PIPE, text=True, env=env, timeout=timeout)


def test_a_users_file_is_refused_before_scoring_and_kept(ds, tmp_path, capsys, monkeypatch):
    """`--json notes.txt` replaced the notes with the scores, without a word."""
    notes = tmp_path / "notes.json"
    notes.write_text('{"mine": 1}\n')
    monkeypatch.setattr(metrics, "evaluate", lambda *a, **k: pytest.fail("scored before the check"))
    assert metrics_cli.main(_args(ds, "--json", notes)) == 2
    _one_error(capsys, "already exists: use --overwrite")
    assert metrics_cli.main(_args(ds, "--json", notes, "--overwrite")) == 2
    _one_error(capsys, "is not a metrics JSON: refusing to replace it, even when overwriting")
    assert notes.read_text() == '{"mine": 1}\n'


def test_overwrite_replaces_an_earlier_metrics_json(ds, tmp_path, capsys):
    out = tmp_path / "m.json"
    assert metrics_cli.main(_args(ds, "--json", out, "--metric", "stq")) == 0
    assert set(json.loads(out.read_text())) == {"stq"}
    assert metrics_cli.main(_args(ds, "--json", out, "--overwrite")) == 0
    assert set(json.loads(out.read_text())) == {"veq", "stq"}
    assert [p.name for p in tmp_path.iterdir()] == ["m.json"]  # no temporary file left


def test_a_symbolic_link_is_not_written_through(ds, tmp_path, capsys):
    (tmp_path / "target.json").write_text("keep\n")
    (tmp_path / "link.json").symlink_to(tmp_path / "target.json")
    for extra in ((), ("--overwrite",)):
        assert metrics_cli.main(_args(ds, "--json", tmp_path / "link.json", *extra)) == 2
        capsys.readouterr()
    assert (tmp_path / "target.json").read_text() == "keep\n"


def test_a_file_appearing_while_scoring_is_left_as_it_is(ds, tmp_path, capsys, monkeypatch):
    out = tmp_path / "m.json"
    real = metrics.evaluate

    def appear(*a, **k):
        out.write_text("theirs\n")
        return real(*a, **k)

    monkeypatch.setattr(metrics, "evaluate", appear)
    assert metrics_cli.main(_args(ds, "--json", out)) == 1
    _one_error(capsys, "appeared while the metrics were computed")
    assert out.read_text() == "theirs\n"


def test_a_named_pipe_nobody_reads_is_refused_at_once(ds, tmp_path):
    """It was opened after scoring and waited for a reader for ever."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    proc = _entitysam(*_args(ds, "--json", fifo), stdout=subprocess.DEVNULL, timeout=60)
    assert proc.returncode == 2 and "a named pipe that nobody reads" in proc.stderr, proc.stderr


def test_a_named_pipe_with_a_reader_gets_the_json(ds, tmp_path, capsys):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    try:
        assert metrics_cli.main(_args(ds, "--json", fifo)) == 0
        os.set_blocking(reader, True)
        data = b""
        while chunk := os.read(reader, 1 << 16):
            data += chunk
    finally:
        os.close(reader)
    assert set(json.loads(data)) == {"veq", "stq"}


def test_dev_stdout_redirected_to_a_file_keeps_the_table(ds, tmp_path):
    """Reopening /dev/stdout (a file) started at byte 0 and wrote the JSON over the table."""
    with open(tmp_path / "out.txt", "w") as f:
        proc = _entitysam(*_args(ds, "--json", "/dev/stdout"), stdout=f)
    assert proc.returncode == 0, proc.stderr
    text = (tmp_path / "out.txt").read_text()
    assert text.startswith("VEQ (class-agnostic")
    assert set(json.loads(text[text.index("\n{") + 1:])) == {"veq", "stq"}


def test_dev_stdout_through_a_pipe_and_dev_null_work(ds, capsys):
    proc = _entitysam(*_args(ds, "--json", "/dev/stdout"), stdout=subprocess.PIPE)
    assert proc.returncode == 0 and proc.stdout.startswith("VEQ") and '"veq"' in proc.stdout, proc.stderr
    assert metrics_cli.main(_args(ds, "--json", os.devnull)) == 0


def test_a_full_standard_output_is_one_line_and_the_json_is_still_written(ds, tmp_path):
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full here")
    with open("/dev/full", "w") as full:
        proc = _entitysam(*_args(ds, "--json", tmp_path / "m.json"), stdout=full)
    assert proc.returncode == 1 and proc.stderr.startswith("error: cannot write the table to standard output")
    assert proc.stderr.count("\n") == 1, proc.stderr
    assert set(json.loads((tmp_path / "m.json").read_text())) == {"veq", "stq"}


@pytest.mark.parametrize("module", [["entitysam", "metrics"], ["entitysam.cli.metrics"]])
def test_a_closed_standard_output_is_one_line_and_the_json_is_still_written(ds, tmp_path, module):
    """`entitysam metrics ... --json m.json | less`, less quit while scoring: the results file was
    lost with the scores (and `python -m entitysam.cli.metrics` printed a BrokenPipeError traceback)."""
    read, write = os.pipe()
    os.close(read)  # the table's reader is gone before the table comes
    env = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1"}
    try:
        proc = subprocess.run([sys.executable, "-m", *module, *_args(ds, "--json", tmp_path / "m.json")],
                              stdout=write, stderr=subprocess.PIPE, text=True, env=env, timeout=60)
    finally:
        os.close(write)
    assert proc.returncode == 1 and proc.stderr == "error: the output was cut short: its reader closed the pipe " \
                                                   "(broken pipe)\n", proc.stderr
    assert set(json.loads((tmp_path / "m.json").read_text())) == {"veq", "stq"}


def test_descriptor_paths_are_recognised(tmp_path):
    from entitysam.eval.json_output import descriptor_of

    assert descriptor_of("/dev/stdout") == 1 and descriptor_of(f"/proc/{os.getpid()}/fd/7") == 7
    assert descriptor_of(tmp_path / "m.json") is None and descriptor_of("/proc/1/fd/1") in (None, 1)
    (tmp_path / "out").symlink_to("/dev/stderr")
    assert descriptor_of(tmp_path / "out") == 2


def test_the_pipe_check_does_not_wait(tmp_path):
    """The check itself returns at once (no thread left waiting on the pipe)."""
    from entitysam.errors import InvalidArgumentError
    from entitysam.eval.json_output import open_destination

    os.mkfifo(tmp_path / "p")
    done = threading.Event()

    def check():
        with pytest.raises(InvalidArgumentError):
            open_destination(tmp_path / "p", option="--json")
        done.set()

    threading.Thread(target=check, daemon=True).start()
    assert done.wait(10)


def test_dev_null_is_taken_where_dev_is_not_writable(monkeypatch):
    """/dev is root's: for any other user the folder check refused `--json /dev/null` (and a named
    pipe in a folder they cannot write), which the tool only writes into. Emulated: os.access says
    no folder is writable."""
    from entitysam.eval.json_output import open_destination

    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if mode & os.W_OK and os.path.isdir(p)
                        else real(p, mode, **kw))
    dest = open_destination("/dev/null", option="--json")
    dest.write("{}")
    dest.close()


def test_a_descriptor_open_for_reading_only_is_refused_before_scoring(tmp_path):
    """`--json /dev/stdin` (or /dev/fd/N of a file read) was taken, and its write failed with EBADF
    only after scoring."""
    from entitysam.errors import InvalidArgumentError
    from entitysam.eval.json_output import open_destination

    (tmp_path / "in.txt").write_text("input")
    fd = os.open(tmp_path / "in.txt", os.O_RDONLY)
    try:
        with pytest.raises(InvalidArgumentError, match="open for reading only"):
            open_destination(f"/dev/fd/{fd}", option="--json")
    finally:
        os.close(fd)
    assert (tmp_path / "in.txt").read_text() == "input"


def test_an_earlier_results_file_deleted_while_scoring_is_written_anew(tmp_path):
    """With --overwrite, an earlier metrics JSON deleted during scoring was "no longer a metrics
    JSON": nothing written, though nothing was there to keep."""
    from entitysam.eval.json_output import open_destination

    path = tmp_path / "m.json"
    path.write_text('{"veq": {}}')
    dest = open_destination(path, option="--json", overwrite=True)
    path.unlink()
    dest.write('{"stq": {}}')
    dest.close()
    assert json.loads(path.read_text()) == {"stq": {}}


def test_a_dash_is_standard_output_not_a_file(ds, tmp_path):
    """`--json -` wrote a file named "-" in the current folder; it is standard output, after the table."""
    env = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1"}
    with open(tmp_path / "out.txt", "w") as f:
        proc = subprocess.run([sys.executable, "-m", "entitysam", "metrics", *_args(ds, "--json", "-")], stdout=f,
                              stderr=subprocess.PIPE, text=True, env=env, timeout=60, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert not os.path.lexists(tmp_path / "-")
    text = (tmp_path / "out.txt").read_text()
    assert text.startswith("VEQ (class-agnostic")
    assert set(json.loads(text[text.index("\n{") + 1:])) == {"veq", "stq"}


def test_a_dash_is_standard_output_also_where_a_file_named_dash_exists(ds, tmp_path, monkeypatch, capfd):
    (tmp_path / "-").write_text("notes\n")
    monkeypatch.chdir(tmp_path)
    assert metrics_cli.main(_args(ds, "--json", "-")) == 0
    assert (tmp_path / "-").read_text() == "notes\n"
    out = capfd.readouterr().out
    assert set(json.loads(out[out.index("\n{") + 1:])) == {"veq", "stq"}


@pytest.mark.parametrize("module", ["entitysam.eval.metrics", "entitysam.cli.metrics"])
def test_every_entry_point_says_an_interrupt_in_one_line(ds, module):
    """`python -m entitysam.eval.metrics` (README: the same as `entitysam metrics`) ran the command
    without the entry point's handling: a Ctrl-C while scoring was a KeyboardInterrupt traceback and a
    death by SIGINT, not `error: interrupted` and exit 130. (The Ctrl-C: raised by the scoring.)"""
    script = ("import runpy, sys\n"
              "import entitysam.eval.metrics as m\n"
              "def scoring(*args, **kwargs):\n"
              "    raise KeyboardInterrupt\n"
              "m.evaluate = scoring\n"
              f"sys.argv = [{module!r}, *sys.argv[1:]]\n"
              f"runpy.run_module({module!r}, run_name='__main__', alter_sys=True)\n")
    env = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-W", "ignore", "-c", script, *_args(ds)], capture_output=True, text=True,
                          env=env, timeout=60)
    assert proc.returncode == 130 and proc.stderr == "error: interrupted\n", proc.stderr


def test_every_entry_point_of_the_command_gives_the_same_output(ds):
    """The command lives in entitysam.cli.metrics; `python -m entitysam.eval.metrics` (README
    "Metrics") and `python -m entitysam.cli.metrics` are still `entitysam metrics`."""
    env = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1"}
    runs = [subprocess.run([sys.executable, "-m", *module, *_args(ds, "--json", "-")], capture_output=True,
                           text=True, env=env, timeout=120)
            for module in (["entitysam", "metrics"], ["entitysam.eval.metrics"], ["entitysam.cli.metrics"])]
    assert [(r.returncode, r.stderr) for r in runs] == [(0, "")] * 3, [r.stderr for r in runs]
    assert '"veq"' in runs[0].stdout and runs[1].stdout == runs[0].stdout == runs[2].stdout
    usage = [subprocess.run([sys.executable, "-m", module, "-h"], capture_output=True, text=True, env=env,
                            timeout=60).stdout for module in ("entitysam.eval.metrics", "entitysam.cli.metrics")]
    assert usage[0].startswith("usage: entitysam metrics") and usage[0] == usage[1]
