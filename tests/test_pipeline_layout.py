"""The public model and errors of the pipeline layer (issue 20): the public `EntitySAM` is a
pipeline class with real signatures, errors form one hierarchy, library messages name no
command-line flag. Import rules (cycles, `modeling/` purity, private names) are in test_layout.py."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import entitysam

SRC = Path(entitysam.__file__).parent


def test_public_model_is_the_pipeline_class_with_real_signatures():
    from entitysam.modeling.entitysam import EntitySAM as Network
    from entitysam.pipeline.loading import EntitySAM

    assert entitysam.EntitySAM is EntitySAM and issubclass(EntitySAM, Network)
    for name in ("from_pretrained", "from_checkpoint", "segment", "stream"):
        assert not hasattr(Network, name), name  # the training model carries no user API
    segment = inspect.signature(EntitySAM.segment).parameters
    assert {"video", "start", "end", "stride", "dtype", "save_logits", "exact"} <= set(segment)
    stream = inspect.signature(EntitySAM.stream).parameters
    assert {"video", "delay", "live", "queue_size", "output", "formats"} <= set(stream)
    assert "name" in inspect.signature(EntitySAM.from_pretrained).parameters
    assert "checkpoint_path" in EntitySAM.__annotations__ and EntitySAM.checkpoint_path is None


def test_loaders_return_the_public_class_and_record_the_file(tmp_path):
    import torch

    from _media import tiny_state_dict
    from entitysam.pipeline.loading import EntitySAM, load_model

    path = tmp_path / "tiny.pth"
    torch.save({"model": tiny_state_dict()}, path)
    model = EntitySAM.from_checkpoint(path)
    assert type(model) is EntitySAM and model.checkpoint_path == str(path)
    again = load_model(path, device="cpu")
    assert type(again) is EntitySAM and again.checkpoint_path == str(path)


def _string_literals(path: Path) -> list[str]:
    """The string constants of a file, docstrings left out (messages, not documentation)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef)) and node.body
                  and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)}
    return [node.value for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings]


def test_library_messages_name_no_command_line_flag_of_the_checkpoint_loader():
    """The loaders say allow_pickle=True; only the command line words --trust-checkpoint-code."""
    for path in [SRC / "checkpoints.py", SRC / "errors.py", *sorted((SRC / "pipeline").glob("*.py"))]:
        assert not [text for text in _string_literals(path) if "--trust" in text], path


def test_error_classes_form_one_hierarchy():
    from entitysam import errors

    classes = [c for c in vars(errors).values() if isinstance(c, type) and issubclass(c, Exception)]
    assert len(classes) > 5
    assert all(issubclass(c, errors.EntitySAMError) for c in classes)
    assert not issubclass(errors.CheckpointMismatchError, RuntimeError)


def test_every_error_class_of_the_package_is_an_entitysam_error():
    import importlib
    import pkgutil

    from entitysam.errors import EntitySAMError

    defined = []
    for info in pkgutil.walk_packages(entitysam.__path__, "entitysam."):
        if info.name.endswith("__main__"):
            continue
        module = importlib.import_module(info.name)
        defined += [c for c in vars(module).values() if isinstance(c, type) and issubclass(c, Exception)
                    and not issubclass(c, Warning) and c.__module__ == info.name]
    assert len(defined) >= 10
    assert [c.__qualname__ for c in defined if not issubclass(c, EntitySAMError)] == []


def test_demo_output_in_use_names_the_api_option_and_the_command_line_flag(tmp_path, capsys):
    import pytest

    from entitysam import cli
    from entitysam.pipeline.demo import DemoOutputInUseError, check_demo_request

    out = tmp_path / "o"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    for overwrite, fact in ((False, "is not empty"), (True, "not a demo run")):
        with pytest.raises(DemoOutputInUseError) as err:
            check_demo_request(out, num_frames=2, width=64, height=48, seed=0, overwrite=overwrite)
        assert fact in str(err.value) and "overwrite=True" in str(err.value) and "--overwrite" not in str(err.value)
        args = ["demo", "-o", str(out), "--frames", "2", "-q"] + (["--overwrite"] if overwrite else [])
        assert cli.main(args) == 1
        printed = capsys.readouterr().err
        assert fact in printed and "--overwrite" in printed and "choose another -o" in printed
    assert (out / "precious.txt").read_text() == "keep me"
