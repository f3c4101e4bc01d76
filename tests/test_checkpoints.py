"""State-dict layout of the published models and checkpoint loading errors."""

from __future__ import annotations

import json

import pytest
import torch

from entitysam.checkpoints import infer_config, load_dinov2_pretrained, load_entitysam, load_sam2_pretrained
from entitysam.config import get_config
from entitysam.errors import CheckpointMismatchError
from entitysam.modeling.entitysam import EntitySAM

from conftest import reference_dir


def _meta_model(name: str) -> EntitySAM:
    with torch.device("meta"):
        return EntitySAM(get_config(name))


@pytest.mark.parametrize("name, manifest", [("vit-s", "manifest-vits.json"), ("vit-l", "manifest-vitl.json")])
def test_state_dict_matches_official_manifest(name, manifest):
    path = reference_dir() / manifest
    assert path.is_file(), f"reference manifest missing: {path}"
    entries = json.loads(path.read_text())["entries"]
    expected = [(e["key"], tuple(e["shape"])) for e in entries]
    got = [(k, tuple(v.shape)) for k, v in _meta_model(name).state_dict().items()]
    assert got == expected  # same keys, same shapes, same order
    buffers = {e["key"] for e in entries if e["kind"] == "buffer"}
    model = _meta_model(name)
    assert {k for k, _ in model.named_buffers()} == buffers


def _tiny_state():
    torch.manual_seed(1)
    return EntitySAM(get_config("tiny")).state_dict()


def test_load_roundtrip_with_and_without_wrapper(tmp_path):
    state = _tiny_state()
    torch.save({"model": state, "iteration": 9999}, tmp_path / "wrapped.pth")
    torch.save(state, tmp_path / "bare.pth")
    for file in ("wrapped.pth", "bare.pth"):
        model = load_entitysam(tmp_path / file)  # config inferred from the keys
        assert model.cfg.name == "tiny"
        for k, v in model.state_dict().items():
            assert torch.equal(v, state[k]), k


def test_missing_unexpected_and_shape_errors_are_listed():
    state = dict(_tiny_state())
    del state["offset_fc.weight"]
    state["extra.weight"] = torch.zeros(3)
    state["offset_cls.bias"] = torch.zeros(7)
    with pytest.raises(CheckpointMismatchError) as err:
        load_entitysam(state, "tiny")
    msg = str(err.value)
    assert "missing keys (1)" in msg and "offset_fc.weight" in msg
    assert "unexpected keys (1)" in msg and "extra.weight" in msg
    assert "offset_cls.bias" in msg and "(7,)" in msg


def test_wrong_config_names_the_one_that_fits():
    state = _tiny_state()
    with pytest.raises(CheckpointMismatchError) as err:
        load_entitysam(state, "vit-s")
    assert "fits the 'tiny' configuration" in str(err.value)


def test_truncated_file_gives_readable_error(tmp_path):
    torch.save({"model": _tiny_state()}, tmp_path / "full.pth")
    data = (tmp_path / "full.pth").read_bytes()
    (tmp_path / "cut.pth").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointMismatchError, match="cannot read checkpoint"):
        load_entitysam(tmp_path / "cut.pth")


def test_partial_checkpoint_names_closest_config():
    state = {k: v for k, v in _tiny_state().items() if not k.startswith("memory_encoder.")}
    with pytest.raises(CheckpointMismatchError) as err:
        load_entitysam(state)
    assert "closest: 'tiny'" in str(err.value)
    assert infer_config(state) is None


def test_pretrained_parts_report_what_was_filled():
    model = EntitySAM(get_config("tiny"))
    donor = _tiny_state()
    sam2 = {k: v for k, v in donor.items() if k.startswith(("image_encoder.", "memory_"))}
    sam2["obj_ptr_proj.layers.0.weight"] = torch.zeros(4, 4)  # SAM 2.1 has it, EntitySAM not
    report = load_sam2_pretrained(model, {"model": sam2})
    assert "obj_ptr_proj.layers.0.weight" in report.ignored
    assert "image_encoder.trunk.pos_embed" in report.loaded
    assert "sam_mask_decoder.queries.weight" in report.not_filled
    assert torch.equal(model.image_encoder.trunk.pos_embed, donor["image_encoder.trunk.pos_embed"])

    dino = {k[len("dinov2_feature_extractor."):]: v for k, v in donor.items()
            if k.startswith("dinov2_feature_extractor.")}
    report = load_dinov2_pretrained(model, dino)
    assert not report.not_filled and not report.shape_mismatch
    assert len(report.loaded) == len(dino)
