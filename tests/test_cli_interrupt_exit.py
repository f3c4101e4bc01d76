"""A Ctrl-C handled by a command keeps the command's exit code under `python -m entitysam`."""

from __future__ import annotations

import os
import subprocess
import sys

from conftest import REPO


def environment() -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO / "src"), env.get("PYTHONPATH")]))
    return env


def test_a_handled_ctrl_c_that_left_string_compiled_code_keeps_the_exit_code(tmp_path):
    """A KeyboardInterrupt leaving code compiled from a string (here exec(); dataclasses and
    namedtuple during an import: a Ctrl-C while a command starts), handled by the command (code
    130), made `python -m entitysam` kill itself by SIGINT at exit (status -2, nothing printed)
    instead of exiting with 130: CPython keeps a record of it even once caught."""
    probe = tmp_path / "probe"
    probe.mkdir()
    (probe / "__main__.py").write_text(
        "import sys\n"
        "import entitysam.cli as cli\n"
        "def main(*, then=None):\n"
        "    try:\n"
        "        exec('raise KeyboardInterrupt')\n"
        "    except KeyboardInterrupt:\n"
        "        return 130\n"
        "cli.main = main\n"
        "sys.exit(cli.command())\n")
    env = environment()
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), env["PYTHONPATH"]])
    done = subprocess.run([sys.executable, "-m", "probe"], capture_output=True, text=True, env=env, timeout=60)
    assert (done.returncode, done.stderr) == (130, "")


# `python -m entitysam` that gets a Ctrl-C the instant its exit shield takes the signals over.
CTRL_C_AS_THE_SHIELD_TAKES_OVER = """
import os, runpy, signal
import entitysam.cli as cli
set_handler = signal.signal
def and_a_ctrl_c(sig, handler):
    before = set_handler(sig, handler)
    if isinstance(handler, cli.ExitShield) and sig == signal.SIGINT:
        os.kill(os.getpid(), signal.SIGINT)
    return before
signal.signal = and_a_ctrl_c
runpy.run_module('entitysam', run_name='__main__', alter_sys=True)
"""


def test_a_ctrl_c_as_the_command_ends_keeps_its_exit_code(tmp_path):
    """A second Ctrl-C landing as main returned (the viewer stopped by a first one: exit 0) ended
    the process with 130, or killed it by SIGINT: the code is the command's."""
    missing = tmp_path / "missing.mp4"
    args = ["segment", str(missing), "-o", str(tmp_path / "out")]
    plain = subprocess.run([sys.executable, "-m", "entitysam", *args], capture_output=True, text=True,
                           env=environment(), timeout=120)
    assert plain.returncode not in (0, 130) and str(missing) in plain.stderr  # (input not found: 1)
    done = subprocess.run([sys.executable, "-c", CTRL_C_AS_THE_SHIELD_TAKES_OVER, *args], capture_output=True,
                          text=True, env=environment(), timeout=120)
    assert (done.returncode, done.stderr) == (plain.returncode, plain.stderr)


def test_an_interrupt_held_by_a_block_that_fails_still_stops_the_run():
    """A Ctrl-C held while writing (deferred_sigint) was forgotten when the write then failed: a
    batch took the write's error for a failed video and went on, and the next Ctrl-C, during the
    cleanup, raised again. The interrupt is raised, from the write's error; later ones are ignored."""
    import signal

    import pytest

    from entitysam.interrupts import deferred_sigint, interrupts_once

    with interrupts_once():
        with pytest.raises(KeyboardInterrupt) as stopped:
            with deferred_sigint():
                os.kill(os.getpid(), signal.SIGINT)
                raise OSError("disk full")
        assert isinstance(stopped.value.__cause__, OSError)
        after = signal.getsignal(signal.SIGINT)
        try:
            os.kill(os.getpid(), signal.SIGINT)  # (during the cleanup: ignored)
        except KeyboardInterrupt:
            pytest.fail("the second Ctrl-C interrupted the cleanup")
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # (restored after the block)
    assert after.__name__ == "_ignore"
    with pytest.raises(OSError, match="disk full"):  # without an interrupt: the block's own error
        with deferred_sigint():
            raise OSError("disk full")
