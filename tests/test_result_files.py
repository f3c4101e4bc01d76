"""io/result_files.py: the offline result's files written by a thread pool (PNG/RLE) and an
overlay thread are the files one thread writes, byte for byte (overlay.mp4: the same frames fed
to the encoder, see `files_of`); an error anywhere aborts all."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from _video_compare import DecodedVideo
from entitysam.pipeline.result import FrameInfo
from entitysam.errors import EntitySAMError
from entitysam.io import idpng, overlay, result_files
from entitysam.io.entities import EntitiesWriter, EntityStats
from entitysam.io.result_files import write_result_files
from entitysam.io.sources import ArraySource

FORMATS = ("panoptic", "entities", "overlay")


def make_result(n=12, h=48, w=70, entities=7, seed=0):
    """n frames of moving rectangles (ids 1..entities, some absent in some frames) and images."""
    rng = np.random.default_rng(seed)
    maps = np.zeros((n, h, w), np.int32)
    for t in range(n):
        for sid in range(1, entities + 1):
            if (t + sid) % 5 == 0:
                continue  # absent in this frame
            y, x = (3 * sid + t) % (h - 8), (7 * sid + 2 * t) % (w - 10)
            maps[t, y:y + 8, x:x + 10] = sid
    images = rng.integers(0, 256, (n, h, w, 3), dtype=np.uint8)
    frames = [FrameInfo(t, t, f"{t:06d}", t / 10) for t in range(n)]
    ents = [{"id": sid, "score": 0.5 + sid / 100, "query_index": sid + 3} for sid in range(1, entities + 1)]
    return maps, images, frames, ents


def write(tmp_path, label, workers, maps, images, frames, ents, formats=FORMATS):
    out = tmp_path / label
    out.mkdir()
    fed = []  # digests of the frames the overlay encoder was given, in order
    real_render = overlay.render_overlay

    def recording_render(*args, **kwargs):
        frame = real_render(*args, **kwargs)
        fed.append(hashlib.sha256(np.ascontiguousarray(frame)).hexdigest())
        return frame

    overlay.render_overlay = recording_render
    try:
        written = write_result_files(out, formats, name="vid", fps=10.0, frames=frames, id_maps=iter(maps),
                                     entities=ents, images=ArraySource(images), source_label="vid",
                                     workers=workers)
    finally:
        overlay.render_overlay = real_render
    if fed:
        (out / "overlay.frames").write_text("\n".join(fed))
    return out, written


def files_of(folder):
    """Each file's bytes, except overlay.mp4 (x264 is not bit-reproducible under load, see
    tests/_video_compare.py): its decoded frames, and the digests of the frames fed to the
    encoder (`overlay.frames`, written by `write`), which must be the same exactly."""
    files = {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}
    if "overlay.mp4" in files:
        files["overlay.mp4"] = DecodedVideo(folder / "overlay.mp4")
    return files


def test_threaded_files_equal_sequential_byte_for_byte(tmp_path):
    data = make_result()
    reference, written = write(tmp_path, "seq", 0, *data)
    expected = files_of(reference)
    assert written == ["panoptic/", "panoptic.json", "entities.json", "overlay.mp4"]
    assert len(expected) == 12 + 4  # 12 PNGs, panoptic.json, entities.json, overlay.mp4, overlay.frames
    assert len(expected["overlay.mp4"].frames) == 12 and len(expected["overlay.frames"].split()) == 12
    for workers in (1, 3):
        folder, written_n = write(tmp_path, f"w{workers}", workers, *data)
        assert written_n == written
        got = files_of(folder)
        assert sorted(got) == sorted(expected)
        for name, content in expected.items():
            assert got[name] == content, f"{name} differs with {workers} workers"
    np.testing.assert_array_equal(idpng.read_id_png(reference / "panoptic" / "000003.png"), data[0][3])


@pytest.mark.parametrize("formats", [("panoptic",), ("entities",), ("overlay",), ("panoptic", "overlay")])
def test_threaded_subsets_of_formats(tmp_path, formats):
    data = make_result(n=5)
    seq = files_of(write(tmp_path, "seq", 0, *data, formats=formats)[0])
    assert files_of(write(tmp_path, "par", 2, *data, formats=formats)[0]) == seq


def test_png_error_aborts_everything(tmp_path, monkeypatch):
    maps, images, frames, ents = make_result(n=20)
    real = idpng.write_id_png

    def full(path, id_map, *a, **k):
        if str(path).endswith("000004.png"):
            raise OSError(28, "No space left on device")
        real(path, id_map, *a, **k)

    monkeypatch.setattr(idpng, "write_id_png", full)
    with pytest.raises(OSError, match="No space"):
        write(tmp_path, "out", 3, maps, images, frames, ents)
    leftovers = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert ".entities.json.parts" not in leftovers  # the entities writer was aborted


def test_overlay_error_aborts_everything(tmp_path, monkeypatch):
    maps, images, frames, ents = make_result(n=20)
    calls = []

    def broken(self, frame, time_s=None):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("encoder exploded")

    monkeypatch.setattr(overlay.OverlayWriter, "encode", broken)
    with pytest.raises(RuntimeError, match="encoder exploded"):
        write(tmp_path, "out", 2, maps, images, frames, ents)
    assert ".entities.json.parts" not in {p.name for p in (tmp_path / "out").iterdir()}


def test_overlay_frames_render_while_the_previous_one_encodes(tmp_path, monkeypatch):
    """The overlay's encoder runs on a thread of its own, one frame behind the rendering."""
    import threading

    maps, images, frames, ents = make_result(n=6)
    log, lock = [], threading.Lock()
    render, encode = overlay.OverlayWriter.render, overlay.OverlayWriter.encode
    second_render = threading.Event()

    def spy_render(self, image, id_map):
        with lock:
            log.append(("render", threading.current_thread().name))
            if sum(kind == "render" for kind, _ in log) == 2:
                second_render.set()
        return render(self, image, id_map)

    def spy_encode(self, frame, time_s=None):
        with lock:
            first = not any(kind == "encode" for kind, _ in log)
        if first:
            assert second_render.wait(10), "frame 1 was not rendered while frame 0 was encoding"
        with lock:
            log.append(("encode", threading.current_thread().name))
        return encode(self, frame, time_s)

    monkeypatch.setattr(overlay.OverlayWriter, "render", spy_render)
    monkeypatch.setattr(overlay.OverlayWriter, "encode", spy_encode)
    write(tmp_path, "out", 2, maps, images, frames, ents)
    assert [kind for kind, _ in log].count("encode") == 6
    assert {name for kind, name in log if kind == "render"} & {name for kind, name in log if kind == "encode"} == set()


def test_changed_source_for_overlay_is_reported(tmp_path):
    maps, images, frames, ents = make_result(n=6)
    for workers in (0, 2):
        with pytest.raises(EntitySAMError, match="gave different frames"):
            write(tmp_path, f"out{workers}", workers, maps, images[:4], frames, ents)


def test_encoding_runs_on_several_threads(tmp_path, monkeypatch):
    threads = set()
    real = result_files.frame_segments

    def spy(*args, **kwargs):
        import threading
        threads.add(threading.current_thread().name)
        return real(*args, **kwargs)

    monkeypatch.setattr(result_files, "frame_segments", spy)
    write(tmp_path, "out", 3, *make_result(n=30), formats=("panoptic",))
    assert threads and all(name.startswith("entitysam-png") for name in threads)


def test_entity_stats_accumulator(tmp_path):
    stats = EntityStats()
    maps = make_result(n=6)[0]
    for t, m in enumerate(maps):
        stats.add_id_map(t, m)
    for sid in range(1, 8):
        present = [t for t in range(6) if (maps[t] == sid).any()]
        assert stats.record(sid) == {"first_frame": present[0], "last_frame": present[-1],
                                     "num_frames": len(present), "area": int((maps == sid).sum())}
    assert 99 not in stats and stats.record(99) == {"first_frame": None, "last_frame": None, "num_frames": 0,
                                                    "area": 0}
    writer = EntitiesWriter(tmp_path / "entities.json", "vid")
    for t, m in enumerate(maps):
        writer.add(t, FrameInfo(t, t, str(t), 0.0), m)
    writer.abort()
    assert all(writer.stats.record(sid) == stats.record(sid) for sid in range(1, 9))
