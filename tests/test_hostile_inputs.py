"""Hostile inputs read safely: special files refused before anything blocks or is created, a frame
size limit checked from headers, corrupt frames named, and messages that say what is wrong (symlink
loops, folders without frames, streams). Pixels as displayed (bit depth, orientation, rotation):
test_hostile_pixels.py."""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import struct
import threading
import time
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from _blocking import within
from _cli import run_cli
from _media import read_only_frame, refusing_port, scene, serving, write_frames, write_video
from entitysam.cli.options import DEFAULT_MAX_PIXELS_TEXT, pixel_count
from entitysam.errors import SourceError
from entitysam.io.manifest import MANIFEST
from entitysam.io.sources import (DEFAULT_MAX_PIXELS, FrameFolderSource, FrameSelection, LiveSource,
                                  list_batch_inputs, open_source)


pytestmark = pytest.mark.usefixtures("one_torch_thread")



def listing(path):
    return sorted(p.name for p in path.iterdir()) if path.exists() else []


# ----------------------------------------------------------------------------- special files


@pytest.mark.parametrize("name", ["pipe.mp4", "pipe.png", "pipe"])
def test_fifo_input_refused_without_blocking(tmp_path, name):
    fifo = tmp_path / name
    os.mkfifo(fifo)
    with pytest.raises(SourceError, match=r"is a named pipe \(FIFO\), not a regular file or folder"):
        within(10, open_source, fifo)


@pytest.mark.parametrize("online", [False, True])
def test_fifo_input_cli_offline_and_online(tmp_path, tiny_checkpoint, online):
    fifo = tmp_path / "pipe.mp4"
    os.mkfifo(fifo)
    out = tmp_path / "out"
    r = run_cli(fifo, "-o", out, "--checkpoint", tiny_checkpoint, "-q", *(["--online"] if online else []), timeout=60)
    assert r.returncode == 1, r.stderr
    assert "pipe: input" in r.stderr and "is a named pipe (FIFO)" in r.stderr
    assert not out.exists()  # refused before anything was created: no partial folder


def test_socket_and_devices_refused(tmp_path):
    sock_path = tmp_path / "cam.mp4"
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(sock_path))
        with pytest.raises(SourceError, match="is a socket, not a regular file"):
            within(10, open_source, sock_path)
    for dev in ("/dev/zero", "/dev/null"):  # reading /dev/zero as a video would never end
        with pytest.raises(SourceError, match=f"{dev} is a character device"):
            within(10, open_source, dev)


def test_fifo_inside_frame_folder_and_batch(tmp_path, tiny_checkpoint):
    folder = write_frames(tmp_path / "v", ["0", "2"])
    os.mkfifo(folder / "1.jpg")
    with pytest.raises(SourceError, match=r"v: frame .*1.jpg is a named pipe"):
        within(10, open_source, folder)
    # A frame replaced by a pipe after the folder was listed is refused when it is read, not waited on.
    src = FrameFolderSource(tmp_path / "v", files=[folder / "0.jpg", folder / "2.jpg"])
    (folder / "2.jpg").unlink()
    os.mkfifo(folder / "2.jpg")
    with pytest.raises(SourceError, match=r"frame .*2.jpg is a named pipe"):
        within(10, list, src)

    batch = tmp_path / "batch"
    batch.mkdir()
    write_video(batch / "good.mp4", 2)
    os.mkfifo(batch / "pipe.mp4")
    assert [p.name for p in list_batch_inputs(batch)] == ["good.mp4", "pipe.mp4"]
    out = tmp_path / "out"
    r = run_cli("--batch", batch, "-o", out, "--checkpoint", tiny_checkpoint, "-q", "--save", "panoptic")
    assert r.returncode == 1, r.stderr
    assert "pipe: input" in r.stderr and "named pipe" in r.stderr and "1 of 2 videos failed: pipe" in r.stderr
    assert listing(out) == ["good"]


# ----------------------------------------------------------------------------- links and messages


def test_symlink_loops_and_broken_links(tmp_path, tiny_checkpoint):
    os.symlink("loop.mp4", tmp_path / "loop.mp4")
    with pytest.raises(SourceError, match=r"loop.mp4 is a symbolic link loop"):
        open_source(tmp_path / "loop.mp4")
    os.symlink(tmp_path / "b", tmp_path / "a")
    os.symlink(tmp_path / "a", tmp_path / "b")
    with pytest.raises(SourceError, match=r"a is a symbolic link loop"):
        open_source(tmp_path / "a")
    os.symlink(tmp_path / "gone.mp4", tmp_path / "dangling.mp4")
    with pytest.raises(SourceError, match=r"dangling.mp4 is a symbolic link to .*gone.mp4, which does not exist"):
        open_source(tmp_path / "dangling.mp4")
    folder = write_frames(tmp_path / "v", ["0", "1"])
    os.symlink("2.jpg", folder / "2.jpg")
    with pytest.raises(SourceError, match=r"frame .*2.jpg is a symbolic link loop"):
        open_source(folder)
    r = run_cli(tmp_path / "loop.mp4", "-o", tmp_path / "out", "--checkpoint", tiny_checkpoint, "-q")
    assert r.returncode == 1 and "is a symbolic link loop" in r.stderr and "not found" not in r.stderr


def test_folder_without_frames_says_what_it_holds(tmp_path, tiny_checkpoint):
    folder = tmp_path / "stuff"
    folder.mkdir()
    for name in ("notes.txt", "a.gif", "b.bmp"):
        (folder / name).write_bytes(b"x")
    with pytest.raises(SourceError, match=r"stuff: no frames of the supported types \(.jpg .jpeg .jpe .jfif .png .tif .tiff\) in this "
                                          r"folder; it holds 3 other entries: a.gif, b.bmp, notes.txt$"):
        open_source(folder)
    write_video(folder / "clip.mp4", 2)
    with pytest.raises(SourceError, match=r"4 other entries: .*clip.mp4.*; each video or sub-folder in it can be segmented as a batch"):
        open_source(folder)
    for i in range(6):
        (folder / f"x{i}.txt").write_bytes(b"x")
    with pytest.raises(SourceError, match=r"10 other entries: .* and 5 more"):
        open_source(folder)
    r = run_cli(folder, "-o", tmp_path / "out", "--checkpoint", tiny_checkpoint, "-q")
    assert r.returncode == 1 and "no frames of the supported types" in r.stderr and "empty" not in r.stderr
    empty = tmp_path / "batch"
    empty.mkdir()
    (empty / "readme.txt").write_text("x")
    with pytest.raises(SourceError, match=r"no videos .* in it; it holds readme.txt"):
        list_batch_inputs(empty)


def test_a_folder_named_as_its_result_is_named_once(tmp_path, tiny_checkpoint, monkeypatch, capsys):
    """An empty folder `x.mp4` given as `x.mp4`: the error said the name twice, "error: x.mp4:
    x.mp4: empty folder" (the result's name, then the message, which names the input first)."""
    from entitysam import cli

    monkeypatch.chdir(tmp_path)
    (tmp_path / "x.mp4").mkdir()
    assert cli.main(["segment", "x.mp4", "-o", "out", "--checkpoint", str(tiny_checkpoint), "-q"]) == 1
    assert capsys.readouterr().err == "error: x.mp4: empty folder, no frames (.jpg .jpeg .jpe .jfif .png .tif .tiff)\n"
    (tmp_path / "clip.mp4").write_bytes(b"")  # a message that names the input otherwise keeps its prefix
    assert cli.main(["segment", "clip.mp4", "-o", "out", "--checkpoint", str(tiny_checkpoint), "-q"]) == 1
    assert capsys.readouterr().err == "error: clip: clip.mp4: empty file (0 bytes), not a video\n"


def test_output_is_an_existing_file(tmp_path, tiny_checkpoint):
    write_frames(tmp_path / "v", ["0"])
    (tmp_path / "file").write_text("x")
    for out, msg in ((tmp_path / "file", "is an existing file, not a folder"),
                     (tmp_path / "file" / "sub", "file is a file, not a folder")):
        r = run_cli(tmp_path / "v", "-o", out, "--checkpoint", tiny_checkpoint, "-q")
        assert r.returncode == 2 and msg in r.stderr and "File exists" not in r.stderr
        assert "Traceback" not in r.stderr
    assert (tmp_path / "file").read_text() == "x"


# ----------------------------------------------------------------------------- streams


def test_stream_closed_port_message(tmp_path, tiny_checkpoint):
    url = f"http://127.0.0.1:{refusing_port()}/live.mp4"
    with pytest.raises(SourceError, match=rf"cannot open stream {url}: connection refused .*the stream could not "
                                          r"be opened \(check the address"):
        within(20, LiveSource, url)
    r = run_cli(url, "-o", tmp_path / "out", "--checkpoint", tiny_checkpoint, "--online", "-q", timeout=60)
    assert r.returncode == 1 and f"cannot open stream {url}: connection refused" in r.stderr
    assert "Input/output error" not in r.stderr and not (tmp_path / "out").exists()


def test_a_cameras_password_is_not_written_out(tmp_path):
    """A camera's address carries its password (rtsp://admin:PASSWORD@camera/...): each error line and
    the manifest of every online result (its "input") wrote it out in full. The stream is opened with
    it; what is shown says ***."""
    from entitysam.pipeline.stream_output import online_manifest_head

    url = f"http://admin:s3cret@127.0.0.1:{refusing_port()}/live.mp4"
    with pytest.raises(SourceError, match=r"cannot open stream http://admin:\*\*\*@127\.0\.0\.1:") as err:
        within(20, LiveSource, url)
    assert "s3cret" not in str(err.value)
    with serving(write_video(tmp_path / "v.ts", 3).read_bytes()) as port:
        source = within(20, LiveSource, f"http://admin:s3cret@127.0.0.1:{port}/cam.ts")
        assert len(list(source)) == 3  # (opened with the password)
        head = online_manifest_head(source, live=True, delay=0, queue_size=4, size=(48, 64), fps=10, model={})
        assert head["input"] == f"http://admin:***@127.0.0.1:{port}/cam.ts"
    from entitysam.io.sources.live import shown_url

    assert shown_url("rtsp://admin:s3cret@10.0.0.2:554/live?x=a@b") == "rtsp://admin:***@10.0.0.2:554/live?x=a@b"
    assert shown_url("rtsp://a:b:c@cam") == "rtsp://a:***@cam"
    for plain in ("rtsp://admin@cam/live", "rtsp://cam/live?user=a:b@c", "/dev/video0", "udp://@:1234",
                  "http://cam/live?password=&x=1#t", "http://cam/a?b=c&d",
                  "srt://h:9000?pbkeylen=16&keyframe=1&signal=3&x=1", "http://[::1]:8080/a?", "http://h/?&&=v"):
        assert shown_url(plain) == plain
    # ... nor in its query: cameras take ?user=admin&password=..., signed addresses ?token=...
    assert (shown_url("rtsp://cam:554/cam/realmonitor?channel=1&user=admin&password=s3cret&subtype=0")
            == "rtsp://cam:554/cam/realmonitor?channel=1&user=admin&password=***&subtype=0")
    assert (shown_url("https://a:b@cdn/x.m3u8?Token=abc&X-Amz-Signature=f00&pwd=1#t")
            == "https://a:***@cdn/x.m3u8?Token=***&X-Amz-Signature=***&pwd=***#t")
    assert (shown_url("rtsp://c/x?user=admin;password=s3cret&p%61ssword=s3cret&apiKey=1&access_token=2&jwt=3#token=4")
            == "rtsp://c/x?user=admin;password=***&p%61ssword=***&apiKey=***&access_token=***&jwt=***#token=***")
    assert (shown_url("rtmp://h/app?streamkey=1&authtoken=2&token2=3&passcode=4&token=a;b")
            == "rtmp://h/app?streamkey=***&authtoken=***&token2=***&passcode=***&token=***")
    # a password longer than *** before the query (the query was searched from a shifted place)
    for tail in ("?token=abc", "/live?token=abc", "/x#token=abc"):
        assert shown_url(f"rtsp://admin:verylongpassword@cam{tail}") == f"rtsp://admin:***@cam{tail[:-3]}***"


def test_the_command_line_s_own_messages_about_a_stream_hide_its_password(tmp_path, capsys):
    """segment's checks before any stream is opened (a live input without --online, one given twice,
    two that would write one folder) showed the address with its password."""
    from entitysam import cli

    cam, other = "rtsp://admin:s3cret@127.0.0.1:9/live", "rtsp://admin:s3cret@127.0.0.2:9/live"
    for args, said in (([cam], "is a live source"), (["--online", cam, cam], "is given twice"),
                       (["--online", cam, other], "would both write to")):
        assert cli.main(["segment", *args, "-o", str(tmp_path / "out")]) == 2
        err = capsys.readouterr().err
        assert said in err and "admin:***@127.0.0.1:9/live" in err and "s3cret" not in err, err


@pytest.mark.parametrize("scheme", ["http", "tcp"])
def test_stream_that_never_answers_times_out(scheme):
    with socket.socket() as server:  # accepts connections, never sends a byte
        server.bind(("127.0.0.1", 0))
        server.listen(4)
        url = f"{scheme}://127.0.0.1:{server.getsockname()[1]}/live"
        t0 = time.monotonic()
        with pytest.raises(SourceError, match=rf"cannot open stream {url}: no answer within 1 s \(timed out\)"):
            within(20, LiveSource, url, timeout=(1.0, 1.0))
        assert time.monotonic() - t0 < 10


def test_stream_that_sends_only_padding_is_named_with_the_time_it_took():
    """An MPEG-TS server that sends null packets only: FFmpeg's open timeout applies to each of its
    opening phases, so the open gave up after twice the timeout while the message said "no answer
    within 1 s" (there was an answer: data that holds no stream)."""
    stop = threading.Event()

    def serve(server):
        conn, _ = server.accept()
        conn.recv(4096)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: video/mp2t\r\n\r\n")
        null_packet = b"\x47\x1f\xff\x10" + b"\xff" * 184
        with contextlib.suppress(OSError):
            while not stop.is_set():
                conn.sendall(null_packet * 4)
                time.sleep(0.02)
        conn.close()

    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(4)
        threading.Thread(target=serve, args=(server,), daemon=True).start()
        url = f"http://127.0.0.1:{server.getsockname()[1]}/live.ts"
        try:
            with pytest.raises(SourceError) as caught:
                within(20, LiveSource, url, timeout=(1.0, 1.0))
        finally:
            stop.set()
    message = str(caught.value)
    assert re.search(r"no readable video stream within [23] s \(timed out: data came", message), message
    assert "no answer" not in message


# ----------------------------------------------------------------------------- size limit


def _bomb_png(path: Path, w=60000, h=60000) -> Path:
    """A PNG whose header claims w x h, with (almost) no pixel data: decoding it would fail, so a
    size message proves the header alone was read."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)))
    return path


def _bomb_jpeg(path: Path, w=60000, h=60000) -> Path:
    buf = path.with_suffix(".tmp.jpg")
    Image.new("RGB", (16, 16), (10, 20, 30)).save(buf, quality=90)
    data = bytearray(buf.read_bytes())
    buf.unlink()
    sof = data.index(b"\xff\xc0")
    data[sof + 5:sof + 9] = struct.pack(">HH", h, w)
    path.write_bytes(bytes(data))
    return path


def test_decompression_bombs_refused_from_the_header(tmp_path, tiny_checkpoint):
    for path in (_bomb_png(tmp_path / "bomb.png"), _bomb_jpeg(tmp_path / "bomb.jpg")):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            with pytest.raises(SourceError, match=r"60000x60000 = 3600.0 megapixels, over the limit of 50 "
                                                  r"megapixels: refused before decoding"):
                open_source(path)
        r = run_cli(path, "-o", tmp_path / "out", "--checkpoint", tiny_checkpoint, "-q")
        assert r.returncode == 1 and "3600.0 megapixels" in r.stderr
        assert "Traceback" not in r.stderr and "DecompressionBomb" not in r.stderr
    folder = tmp_path / "frames"
    write_frames(folder, ["0", "1"])
    _bomb_png(folder / "2.png")
    frames = iter(open_source(folder))
    assert next(frames).name == "0" and next(frames).name == "1"
    with pytest.raises(SourceError, match=r"frames: frame 2.png is 60000x60000"):
        next(frames)
    assert not (tmp_path / "out").exists()


def test_max_pixels_option(tmp_path, tiny_checkpoint, monkeypatch):
    assert DEFAULT_MAX_PIXELS == 50_000_000 == pixel_count(DEFAULT_MAX_PIXELS_TEXT)
    Image.fromarray(scene(0)).save(tmp_path / "still.png")  # 64x48 = 3072 pixels
    write_video(tmp_path / "clip.mp4", 2)
    with pytest.raises(SourceError, match=r"still.png: frame still.png is 64x48 = 3072 pixels, over the limit of 3000 "
                                          r"pixels"):  # (was '0.0 megapixels, over the limit of 0.003 megapixels')
        open_source(tmp_path / "still.png", max_pixels=3000)
    with pytest.raises(SourceError, match=r"clip.mp4: its video stream is 64x48"):
        open_source(tmp_path / "clip.mp4", max_pixels=3000)
    assert len(list(open_source(tmp_path / "clip.mp4", max_pixels=3072))) == 2
    with pytest.raises(SourceError, match="max_pixels must be a positive number"):
        open_source(tmp_path / "still.png", max_pixels=0)
    # Above Pillow's own limits (lowered here to stand for a huge image): no warning, no error, when allowed.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    assert read_only_frame(tmp_path / "still.png", max_pixels=None).shape == (48, 64, 3)
    assert Image.MAX_IMAGE_PIXELS == 1000
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 2000)  # 3072 is between 1x and 2x: Pillow would only warn
    assert read_only_frame(tmp_path / "still.png").shape == (48, 64, 3)

    out = tmp_path / "out"
    r = run_cli(tmp_path / "still.png", "-o", out, "--checkpoint", tiny_checkpoint, "-q", "--max-pixels", "3k")
    assert r.returncode == 1 and "over the limit of 3000 pixels" in r.stderr and "--max-pixels" in r.stderr
    assert "corrupt" not in r.stderr  # a readable frame over the limit is not "corrupt"
    r = run_cli(tmp_path / "still.png", "-o", out, "--checkpoint", tiny_checkpoint, "-q", "--max-pixels", "none",
                "--save", "panoptic")
    assert r.returncode == 0, r.stderr
    for bad in ("0", "-5", "abc", "nan"):
        r = run_cli(tmp_path / "still.png", "-o", out, "--checkpoint", tiny_checkpoint, "--max-pixels", bad)
        assert r.returncode == 2 and "--max-pixels" in r.stderr


def test_max_pixels_is_a_whole_number_of_pixels():
    """'1.5' was cut to a limit of 1 pixel (every frame then refused); '1.1M' is exactly 1100000
    (1100000.0000000002 as a float); an exponent past reach is refused at once."""
    import argparse

    assert [pixel_count(t) for t in ("50M", "1.1M", "800k", "1e3", " 7 ", "1e30", "none")] == [
        50_000_000, 1_100_000, 800_000, 1000, 7, 10**30, None]
    for bad in ("1.5", "0.0001k", "1e31", "1e999999999", "1e-999999999", "9" * 5000, "Infinity", "sNaN", "k", ""):
        with pytest.raises(argparse.ArgumentTypeError, match="whole, positive number of pixels"):
            pixel_count(bad)


# ----------------------------------------------------------------------------- corrupt frames


def _corrupt_video(tmp_path: Path) -> tuple[Path, int | None]:
    """An mp4 with 20 bytes in the middle overwritten so that the decoder conceals the damage in a
    frame and flags it as corrupt; returns (path, that frame) (None if no tried offset gives one)."""
    import av

    full = write_video(tmp_path / "full.mp4", 20, noise=True)
    original = full.read_bytes()
    path = tmp_path / "bad.mp4"
    for fraction in np.linspace(0.3, 0.8, 8):
        data = bytearray(original)
        p = int(len(data) * fraction)
        data[p:p + 20] = np.random.default_rng(p).integers(0, 256, 20, dtype=np.uint8).tobytes()
        path.write_bytes(bytes(data))
        try:
            with av.open(str(path)) as c:
                flagged = [i for i, f in enumerate(c.decode(video=0)) if f.is_corrupt]
        except av.error.FFmpegError:
            continue
        if flagged:
            return path, flagged[0]
    return path, None


def test_corrupt_video_frame_named(tmp_path, tiny_checkpoint):
    path, bad = _corrupt_video(tmp_path)
    if bad is None:
        pytest.skip("this FFmpeg build flags none of the damaged frames")
    with pytest.raises(SourceError, match=rf"bad.mp4: frame {bad:06d} is corrupt .*: pass end={bad} to stop before it"):
        list(open_source(path))
    assert len(list(open_source(path, FrameSelection(end=bad)))) == bad  # the frames before it are usable
    for online in (False, True):
        out = tmp_path / f"out{online}"
        r = run_cli(path, "-o", out, "--checkpoint", tiny_checkpoint, "-q", "--save", "panoptic",
                    *(["--online"] if online else []))
        assert r.returncode == 1 and f"frame {bad:06d} is corrupt" in r.stderr
        manifests = list(out.rglob(MANIFEST))
        if not online:
            assert listing(out) == []  # nothing half-written
        else:  # online keeps the frames done, marked as failed, never as complete
            assert len(manifests) == 1
            m = json.loads(manifests[0].read_text())
            assert m["complete"] is False and m["status"] == "failed"


def test_corrupt_image_in_folder_offline_leaves_nothing(tmp_path, tiny_checkpoint):
    folder = write_frames(tmp_path / "v", ["0", "1", "2", "3"])
    data = (folder / "2.jpg").read_bytes()
    (folder / "2.jpg").write_bytes(data[: len(data) // 3])
    out = tmp_path / "out"
    r = run_cli(folder, "-o", out, "--checkpoint", tiny_checkpoint, "-q")
    assert r.returncode == 1 and "cannot read frame" in r.stderr and "2.jpg" in r.stderr
    assert listing(out) == []


def test_api_max_pixels(tmp_path, tiny_model):
    from entitysam import segment, stream

    Image.fromarray(scene(0)).save(tmp_path / "still.png")
    for fn in (segment, stream):
        with pytest.raises(SourceError, match=r"still.png is 64x48 = 3072 pixels, over the limit of 1000 pixels"):
            fn(tiny_model, tmp_path / "still.png", max_pixels=1000)
    with segment(tiny_model, tmp_path / "still.png", max_pixels=None) as result:
        assert len(result) == 1


@pytest.mark.parametrize("online", [False, True])
def test_names_that_are_not_utf8(tmp_path, tiny_checkpoint, online):
    """Linux names are bytes: a video `bad\\xff.mp4` and a frame `00\\xff.jpg` are segmented; the
    names go into the JSON files as `\\udcff` escapes (every file stays valid UTF-8) from which
    os.fsencode gives back the bytes; the viewer serves them."""
    video = write_video(tmp_path / "clip.mp4", 3)
    video = video.rename(tmp_path / os.fsdecode(b"bad\xff.mp4"))
    frames = write_frames(tmp_path / "uf", [os.fsdecode(b"00\xff"), "01", "02"])
    out = tmp_path / "out"
    for source, name in ((video, "bad_"), (frames, "uf")):
        r = run_cli(source, "-o", out, "--checkpoint", tiny_checkpoint, "-q", "--save", "panoptic,entities",
                    *(["--online"] if online else []))
        assert r.returncode == 0, r.stderr
        result = out / name
        texts = {p.name: p.read_bytes().decode("utf-8") for p in result.rglob("*.json*")}  # strict UTF-8
        manifest = json.loads(texts[MANIFEST])
        assert manifest["complete"] is True and os.fsencode(manifest["input"]) == os.fsencode(source)
    names = [json.loads(line)["name"] for line in texts["entities.jsonl"].splitlines()] if online else \
        [f["name"] for f in json.loads(texts["entities.json"])["frames"]]
    assert [os.fsencode(n) for n in names] == [b"00\xff", b"01", b"02"]
    assert "00\\udcff" in texts["panoptic.json"]
    assert (result / "panoptic" / os.fsdecode(b"00\xff.png")).is_file()
    starlette = pytest.importorskip("starlette.testclient", reason="the viewer needs starlette and httpx")
    from entitysam.review.server import Viewer, create_app

    app = create_app(Viewer(result, token="t"), loopback_only=True)
    with starlette.TestClient(app, raise_server_exceptions=False) as client:
        video_info = client.get("/api/video")
        assert video_info.status_code == 200, video_info.text
        assert os.fsencode(video_info.json()["frame_names"][0]) == b"00\xff"
        assert client.get("/api/frames/0.jpg").status_code == 200


def test_out_of_memory_decoding_a_frame_is_one_line(tmp_path, tiny_checkpoint):
    """--max-pixels none and a header declaring 1x2147483647: Pillow's decoder runs out of memory;
    the user gets the file and --max-pixels, not a MemoryError traceback."""
    (tmp_path / "frames").mkdir()
    tall = _bomb_png(tmp_path / "frames" / "tall.png", w=1, h=2**31 - 1)
    with pytest.raises(SourceError, match=r"tall.png is 1x2147483647 = 2147.5 megapixels: out of memory"):
        read_only_frame(tall, max_pixels=None)
    for online in ((), ("--online",)):
        r = run_cli(tall.parent, "-o", tmp_path / "out", "--checkpoint", tiny_checkpoint, "-q", "--max-pixels",
                    "none", *online)
        assert r.returncode == 1, r.stderr
        assert "Traceback" not in r.stderr and "MemoryError" not in r.stderr, r.stderr
        assert "tall.png" in r.stderr and "out of memory" in r.stderr and "use --max-pixels N" in r.stderr


def test_out_of_memory_converting_a_video_frame(tmp_path):
    from entitysam.io.sources.video_file import video_frame_to_rgb

    class HugeFrame:  # what PyAV gives when the RGB array cannot be allocated
        width, height = 100000, 100000

        def to_ndarray(self, format):
            raise MemoryError

    with pytest.raises(SourceError, match=r"clip.mp4: frame 000007 is 100000x100000 = 10000.0 megapixels: out of "
                                          r"memory") as info:
        video_frame_to_rgb(HugeFrame(), "clip.mp4", "000007", None, (False, False, False))
    assert info.value.remedies and info.value.remedies[0].argument == "max_pixels"
