"""Library errors state facts and name Python arguments; the command line words the same
remedies with its flags (issue 20: CLI wording only in the CLI)."""

from __future__ import annotations

import ast
import pickle
import re
from pathlib import Path

import pytest

from entitysam.cli.wording import FLAGS, flag_words, user_message
from entitysam.errors import EntitySAMError, OutputError, Remedy, UnsafeCheckpointError
from entitysam.io.output_lock import OutputLock
from entitysam.io.staging import StagedOutput

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "entitysam"
FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]+")


def message_strings(tree: ast.AST):
    """String constants of a module that are not docstrings (messages, f-string parts)."""
    docstrings = set()  # (and the names given to argparse by modules that are command lines of their own)
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "add_argument":
            docstrings.update(id(a) for a in node.args)
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = getattr(node, "body", [])
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                docstrings.add(id(body[0].value))
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            yield node.lineno, node.value


def test_library_messages_name_no_command_line_flags():
    # The command line (cli/), the argparse types it shares (argtypes) and the training launcher's
    # own parser word flags; nothing else does.
    bad = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE)
        if rel.parts[0] == "cli" or rel.as_posix() in ("train/cli.py", "argtypes.py"):
            continue
        for line, text in message_strings(ast.parse(path.read_text())):
            if FLAG.search(text):
                bad.append(f"{rel}:{line}: {text!r}")
    assert not bad, "\n".join(bad)


def remedy_arguments():
    """Every Remedy("argument", ...) the package raises."""
    found = set()
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Call) and getattr(node.func, "id", None) == "Remedy" and node.args
                    and isinstance(node.args[0], ast.Constant)):
                value = node.args[1].value if len(node.args) > 1 and isinstance(node.args[1], ast.Constant) else True
                found.add((node.args[0].value, value))
    return found


def test_every_remedy_the_library_gives_has_a_flag():
    found = remedy_arguments()
    assert {("overwrite", True), ("metrics", False), ("allow_pickle", True)} <= found  # the scan sees them
    missing = sorted(a for a, v in found if a not in FLAGS and (a, v) not in FLAGS)
    assert not missing, f"remedies without a command-line flag: {missing}"


def test_python_and_command_line_words_of_one_error():
    err = OutputError("out/v already holds results", Remedy("overwrite", True, "to replace them"),
                      Remedy("skip_existing", True, "to skip finished videos"))
    assert str(err) == ("out/v already holds results: pass overwrite=True to replace them "
                        "(or pass skip_existing=True to skip finished videos)")
    assert user_message(err) == ("out/v already holds results: use --overwrite to replace them "
                                 "(or use --skip-existing to skip finished videos)")
    assert flag_words(Remedy("metrics", False, "to only write the predictions")) == \
        "use --no-metrics to only write the predictions"
    assert flag_words(Remedy("gt_dir", metavar="DIR")) == "use --gt-dir DIR"
    assert flag_words(Remedy("end", 12, "to stop before it")) == "use --end 12 to stop before it"
    assert flag_words(Remedy("config", "vit-l")) == "use --model vit-l"
    # --model has no 'tiny' (Python's config= has): the command line loads it by leaving --model out
    assert flag_words(Remedy("config", "tiny", "to load it")) == \
        "leave out --model to load it (its configuration, tiny, is then inferred from its keys)"
    # an argument without a flag keeps its Python words rather than inventing a flag
    assert flag_words(Remedy("no_such_argument", 3)) == "pass no_such_argument=3"
    assert user_message(ValueError("plain")) == "plain"


def test_errors_keep_their_remedies_across_processes():
    err = UnsafeCheckpointError("refusing to load x.pth", Remedy("allow_pickle", True, "only if you trust it"),
                                path=Path("x.pth"))
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is UnsafeCheckpointError and str(back) == str(err)
    assert back.remedies == err.remedies and back.problem == err.problem and back.path == Path("x.pth")
    assert user_message(back).endswith("use --trust-checkpoint-code only if you trust it")


def test_existing_result_is_worded_for_python_and_for_the_command_line(tmp_path, capsys):
    final = tmp_path / "video"
    final.mkdir()
    (final / "manifest.json").write_text('{"writer": "entitysam", "complete": true}')
    with pytest.raises(OutputError) as info:
        StagedOutput.check_free(final)
    assert "pass overwrite=True" in str(info.value) and "--" not in str(info.value)
    assert "use --overwrite" in user_message(info.value) and "--skip-existing" in user_message(info.value)


def test_a_held_lock_names_the_wait_argument(tmp_path):
    final = tmp_path / "video"
    with OutputLock.acquire(final):
        import subprocess, sys  # noqa: E401 - another process must hold the lock (flock is per process)
        code = ("import sys; from entitysam.io.output_lock import OutputLock, OutputLockedError\n"
                "from entitysam.cli.wording import user_message\n"
                f"try:\n    OutputLock.acquire({str(final)!r})\n"
                "except OutputLockedError as e:\n    print(str(e)); print(user_message(e))\n")
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60).stdout
    python_words, cli_words = out.strip().splitlines()
    assert python_words.endswith("pass wait=True to wait for it") and "--" not in python_words
    assert cli_words.endswith("use --wait-lock to wait for it")


def test_a_multi_line_message_lists_its_remedies_as_its_last_items():
    err = EntitySAMError("cannot get it:\n  either\n    - put it there, or", Remedy("checkpoint", metavar="PATH"))
    assert str(err).endswith("    - put it there, or\n    - pass checkpoint=PATH")
    assert user_message(err).endswith("    - put it there, or\n    - use --checkpoint PATH")
