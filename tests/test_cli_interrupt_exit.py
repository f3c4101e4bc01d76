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
