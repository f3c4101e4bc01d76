"""README "Python API": the snippet users copy runs as printed, on the bundled demo model instead
of the published one (no download), and writes what it says."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from _media import write_video

README = Path(__file__).resolve().parents[1] / "README.md"

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def readme_python_block(first_line: str) -> str:
    """The ```python block of README.md that starts with `first_line`."""
    blocks = re.findall(r"^```python\n(.*?)^```", README.read_text(encoding="utf-8"), re.S | re.M)
    found = [b for b in blocks if b.startswith(first_line)]
    assert len(found) == 1, f"README has {len(found)} python blocks starting with {first_line!r}"
    return found[0]


def test_the_python_api_snippet_runs_on_the_demo_model(tmp_path, monkeypatch, capsys):
    code = readme_python_block('from entitysam import EntitySAM\n\n'
                               'model = EntitySAM.from_pretrained("vit-s", device="cpu")')
    assert code.count('"vit-s"') == 1
    code = code.replace('"vit-s"', '"demo"')  # the published model needs a download
    monkeypatch.chdir(tmp_path)
    write_video(tmp_path / "clip.mp4", 30)  # 3 s at 10 fps: start="2.5s", stride=2 keep frames 25, 27, 29
    exec(compile(code, "README.md (Python API)", "exec"), {})
    printed = capsys.readouterr().out.splitlines()
    assert re.fullmatch(r"SegmentationResult\('clip', 3 frames 64x48, \d+ entities\)", printed[0]), printed[0]
    result = tmp_path / "out" / "clip"
    assert sorted(p.name for p in result.iterdir()) == ["entities.json", "manifest.json", "overlay.mp4", "panoptic",
                                                        "panoptic.json"]
    entities = json.loads((result / "entities.json").read_text())
    assert [f["source_frame"] for f in entities["frames"]] == [25, 27, 29]
    assert len(printed) == 1 + len(entities["entities"])  # the result, then one line per entity
