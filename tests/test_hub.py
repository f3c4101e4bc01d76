"""Checkpoint resolution and download, against a Hugging Face-like HTTP server on 127.0.0.1."""

from __future__ import annotations

import hashlib
import importlib
import os
import socket
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch

from _blocking import release_readers, swap_for_a_pipe, within
from _media import refusing_port
from entitysam import cli
from entitysam.config import get_config
from entitysam.errors import ModelNotAvailableError
from entitysam.hub import CHECKPOINT_FILES, REPO_ID, checkpoint_url, local_checkpoint_path, resolve_checkpoint
from entitysam.modeling.entitysam import EntitySAM

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def _checkpoint_bytes(tmp_path: Path) -> bytes:
    torch.manual_seed(0)
    path = tmp_path / "served.pth"
    torch.save({"model": EntitySAM(get_config("tiny")).state_dict()}, path)
    return path.read_bytes()


class _Hub:
    """Minimal subset of the hub's file endpoint: HEAD/GET /{repo}/resolve/{revision}/{path}."""

    def __init__(self, files: dict[str, bytes], *, body=None, length: bool = True, status: int | None = None,
                 stall: threading.Event | None = None):
        """body: what a GET sends instead of the file (the ETag stays the file's SHA-256), e.g. bytes
        altered on their way; length=False: no Content-Length, the end of the body is the end of the
        connection (a cut is then no error to the client); status: every answer's HTTP status;
        stall: a GET sends half the body, then waits for this event before the rest."""
        self.files = files
        self.requests: list[tuple[str, str]] = []
        self.ranges: list[str | None] = []  # the Range header of each GET (a resumed download's)
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def _serve(self, body: bool) -> None:
                hub.requests.append((self.command, self.path))
                if body:
                    hub.ranges.append(self.headers.get("Range"))
                prefix = f"/{REPO_ID}/resolve/main/"
                data = hub.files.get(self.path[len(prefix):]) if self.path.startswith(prefix) else None
                if status is not None:
                    self.send_response(status)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if data is None:
                    self.send_response(404)
                    self.send_header("X-Error-Code", "EntryNotFound")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("X-Repo-Commit", COMMIT)
                self.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
                if length:
                    self.send_header("Content-Length", str(len(data)))
                self.send_header("Content-Type", "application/octet-stream")
                self.end_headers()
                if body:
                    sent = data if hub.body is None else hub.body(data)
                    if stall is not None:
                        self.wfile.write(sent[:len(sent) // 2])
                        self.wfile.flush()
                        stall.wait(60)
                        sent = sent[len(sent) // 2:]
                    self.wfile.write(sent)

            def do_HEAD(self):  # noqa: N802
                self._serve(body=False)

            def do_GET(self):  # noqa: N802
                self._serve(body=True)

            def log_message(self, *args):
                pass

        self.body = body
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.timeout = 5
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    """No real home or Hugging Face cache is read or written."""
    monkeypatch.setenv("ENTITYSAM_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    for var in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    return tmp_path


def test_download_from_local_hub_then_cached_offline(isolated, monkeypatch):
    data = _checkpoint_bytes(isolated)
    cache = isolated / "hf-cache"
    with _Hub({CHECKPOINT_FILES["vit-s"]: data}) as hub:
        path = resolve_checkpoint("vit-s", cache_dir=cache, endpoint=hub.endpoint)
        assert path.read_bytes() == data
        assert str(path).startswith(str(cache))
        wanted = f"/{REPO_ID}/resolve/main/{CHECKPOINT_FILES['vit-s']}"
        assert ("HEAD", wanted) in hub.requests and ("GET", wanted) in hub.requests
    # Server gone: the cached copy is found without network.
    again = resolve_checkpoint("vit-s", cache_dir=cache, endpoint=f"http://127.0.0.1:{refusing_port()}")
    assert again.read_bytes() == data
    # The loaded checkpoint is usable (config inferred from its keys).
    from entitysam.checkpoints import load_entitysam
    assert load_entitysam(again).cfg.name == "tiny"


def test_download_command_uses_hf_endpoint(isolated, monkeypatch, capsys):
    data = _checkpoint_bytes(isolated)
    with _Hub({CHECKPOINT_FILES["vit-s"]: data}) as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
        rc = cli.main(["download", "vit-s", "--cache-dir", str(isolated / "c")])
    assert rc == 0
    out = capsys.readouterr().out
    printed = Path(out.strip().split(": ", 1)[1])
    assert printed.read_bytes() == data


def test_download_into_a_cache_dir_fills_it_even_with_a_copy_in_the_model_folder(isolated, monkeypatch, capsys):
    """`entitysam download vit-s --cache-dir /shared/hf` on a machine with a copy in $ENTITYSAM_HOME
    printed that copy's path and left the shared cache, meant for the machines without network,
    empty."""
    from entitysam.hub import local_checkpoint_path

    data = _checkpoint_bytes(isolated)
    local_checkpoint_path("vit-s").parent.mkdir(parents=True)
    local_checkpoint_path("vit-s").write_bytes(data)
    with _Hub({CHECKPOINT_FILES["vit-s"]: data}) as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
        assert cli.main(["download", "vit-s", "--cache-dir", str(isolated / "shared")]) == 0
        printed = Path(capsys.readouterr().out.strip().split(": ", 1)[1])
        assert str(printed).startswith(str(isolated / "shared")) and printed.read_bytes() == data
        assert cli.main(["download", "vit-s"]) == 0  # without it: the copy found first, as before
        assert Path(capsys.readouterr().out.strip().split(": ", 1)[1]) == local_checkpoint_path("vit-s")


def test_download_command_prints_a_cache_dir_of_undecodable_bytes_escaped(isolated, monkeypatch, capsys):
    """The line naming the downloaded file printed the --cache-dir as it is: a name of undecodable
    bytes (\\udcff, legal on Linux) made a strict UTF-8 stdout raise after the download."""
    data = _checkpoint_bytes(isolated)
    with _Hub({CHECKPOINT_FILES["vit-s"]: data}) as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
        assert cli.main(["download", "vit-s", "--cache-dir", str(isolated / "c\udcff")]) == 0
    out = capsys.readouterr().out
    assert "c\\udcff" in out and "\udcff" not in out, out
    out.encode("utf-8")  # what a strict UTF-8 stdout does with it


def test_download_names_each_model_once(isolated, monkeypatch, capsys):
    """`download vit-s vit-s` fetched it twice (offline: two error lines for one model)."""
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{refusing_port()}")
    assert cli.main(["download", "vit-s", "vit-s", "--cache-dir", str(isolated / "c")]) == 1
    assert capsys.readouterr().err.count("error:") == 1


@pytest.mark.parametrize("under", [False, True], ids=["a file", "under a file"])
def test_download_into_a_file_is_a_usage_error_before_the_hub_is_asked(isolated, monkeypatch, capsys, under):
    """--cache-dir naming a file contacted the hub, then failed with exit 1 and a hint about network
    access."""
    (isolated / "f").write_text("mine\n")
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{refusing_port()}")
    import entitysam.hub as hub

    monkeypatch.setattr(hub, "resolve_checkpoint", lambda *a, **k: pytest.fail("the hub was asked"))
    cache = isolated / "f" / "c" if under else isolated / "f"
    assert cli.main(["download", "vit-s", "--cache-dir", str(cache)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is a file, not a folder" in err
    assert (isolated / "f").read_text() == "mine\n"


def test_missing_file_on_hub_gives_instructions(isolated):
    with _Hub({}) as hub:
        with pytest.raises(ModelNotAvailableError) as err:
            resolve_checkpoint("vit-l", cache_dir=isolated / "c", endpoint=hub.endpoint)
    msg = str(err.value)
    assert checkpoint_url("vit-l", hub.endpoint) in msg
    assert msg.endswith("\n    - pass checkpoint=/path/to/model_0009999.pth")  # Python words; the CLI's: --checkpoint


def test_no_network_message_says_what_and_where(isolated, capsys):
    endpoint = f"http://127.0.0.1:{refusing_port()}"
    with pytest.raises(ModelNotAvailableError) as err:
        resolve_checkpoint("vit-s", cache_dir=isolated / "c", endpoint=endpoint)
    msg = str(err.value)
    assert "no network connection to 127.0.0.1" in msg
    assert f"{endpoint}/{REPO_ID}/resolve/main/checkpoints/vit-s/model_0009999.pth" in msg
    assert str(local_checkpoint_path("vit-s")) in msg
    assert "checkpoint=/path/to/model_0009999.pth" in msg and "entitysam download vit-s" in msg


def test_segment_without_network_fails_cleanly(isolated, monkeypatch, capsys):
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{refusing_port()}")
    monkeypatch.setenv("HF_HUB_CACHE", str(isolated / "c"))
    from PIL import Image
    Image.new("RGB", (32, 24)).save(isolated / "a.png")
    rc = cli.main(["segment", str(isolated / "a.png"), "-o", str(isolated / "out"), "--model", "vit-s", "-q"])
    assert rc == 1
    err = capsys.readouterr().err
    assert "cannot get the vit-s checkpoint" in err and "\n    - use --checkpoint /path/to/model_0009999.pth" in err
    assert not (isolated / "out" / "a").exists()


def test_manually_placed_checkpoint_is_used_first(isolated):
    target = local_checkpoint_path("vit-s")
    target.parent.mkdir(parents=True)
    target.write_bytes(b"x")
    assert resolve_checkpoint("vit-s", endpoint="http://127.0.0.1:1") == target


def test_unknown_model_name():
    with pytest.raises(ModelNotAvailableError, match="published models are vit-s, vit-l"):
        resolve_checkpoint("vit-b")


# ----------------------------------------------------------------------------- damaged files, SHA-256


def _blob(path: Path) -> Path:
    return Path(os.path.realpath(path))


@pytest.mark.parametrize("how", ["altered", "cut short without a length"])
def test_damaged_download_is_refused_removed_and_fetched_again(isolated, how):
    """A download whose bytes are not the hub's (a mirror or proxy altering them, or a response
    without a length cut in half: no error for the client) was kept and loaded by every later run;
    huggingface_hub checks the size only, and only when the server sends one."""
    data = _checkpoint_bytes(isolated)
    cache = isolated / "c"
    if how == "altered":
        hub = _Hub({CHECKPOINT_FILES["vit-s"]: data}, body=lambda d: d[:100] + bytes([d[100] ^ 1]) + d[101:])
    else:
        hub = _Hub({CHECKPOINT_FILES["vit-s"]: data}, body=lambda d: d[:len(d) // 2], length=False)
    with hub:
        with pytest.raises(ModelNotAvailableError, match="is damaged .*SHA-256.*; removed; run again") as err:
            resolve_checkpoint("vit-s", cache_dir=cache, endpoint=hub.endpoint)
    assert hashlib.sha256(data).hexdigest() in str(err.value)  # names the blob
    assert not list(cache.rglob("blobs/*")), "the damaged file was kept"
    with _Hub({CHECKPOINT_FILES["vit-s"]: data}) as hub:  # the next run downloads it again
        assert resolve_checkpoint("vit-s", cache_dir=cache, endpoint=hub.endpoint).read_bytes() == data


def test_damaged_cached_file_is_downloaded_again(isolated):
    """A cached checkpoint cut short (a crash before the file system wrote it out, a copy of the
    cache interrupted) or replaced by a named pipe was returned as it was, by every run."""
    data = _checkpoint_bytes(isolated)
    cache = isolated / "c"
    with _Hub({CHECKPOINT_FILES["vit-s"]: data}) as hub:
        blob = _blob(resolve_checkpoint("vit-s", cache_dir=cache, endpoint=hub.endpoint))
        blob.write_bytes(data[:1000])
        path = resolve_checkpoint("vit-s", cache_dir=cache, endpoint=hub.endpoint)
        assert path.read_bytes() == data
        blob.unlink()
        swap_for_a_pipe(blob)
        try:
            path = within(30, resolve_checkpoint, "vit-s", cache_dir=cache, endpoint=hub.endpoint)
            assert path.is_file() and path.read_bytes() == data
        finally:
            release_readers(blob)
    assert sum(method == "GET" for method, _ in hub.requests) == 3


def test_damaged_cached_file_without_download_says_so(isolated):
    data = _checkpoint_bytes(isolated)
    cache = isolated / "c"
    with _Hub({CHECKPOINT_FILES["vit-s"]: data}) as hub:
        blob = _blob(resolve_checkpoint("vit-s", cache_dir=cache, endpoint=hub.endpoint))
    blob.write_bytes(data[:1000])
    with pytest.raises(ModelNotAvailableError, match=r"the cached file .* is damaged .*; removed\n"):
        resolve_checkpoint("vit-s", cache_dir=cache, download=False)
    assert not blob.exists()


_RESOLVE_IN_A_PROCESS = """
import hashlib, sys
from entitysam.hub import resolve_checkpoint
path = resolve_checkpoint("vit-s", cache_dir=sys.argv[1])
print(hashlib.sha256(path.read_bytes()).hexdigest())
"""


def test_eight_processes_share_one_download_of_a_damaged_cached_file(isolated):
    """8 ranks starting at once on a cache whose checkpoint is damaged: each used the damaged file;
    now the first to check it removes it, one downloads it again (huggingface_hub's lock), all load
    the good one."""
    data = _checkpoint_bytes(isolated)
    cache = isolated / "c"
    with _Hub({CHECKPOINT_FILES["vit-s"]: data}) as hub:
        _blob(resolve_checkpoint("vit-s", cache_dir=cache, endpoint=hub.endpoint)).write_bytes(data[:-1])
        hub.requests.clear()
        env = dict(os.environ, HF_ENDPOINT=hub.endpoint, PYTHONPATH=str(Path(__file__).parents[1] / "src"))
        procs = [subprocess.Popen([sys.executable, "-c", _RESOLVE_IN_A_PROCESS, str(cache)], env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(8)]
        outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0] * 8, [err for _, err in outs]
    assert {out.strip() for out, _ in outs} == {hashlib.sha256(data).hexdigest()}
    assert sum(method == "GET" for method, _ in hub.requests) == 1


def _wait_for(condition, timeout=60.0):
    import time

    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_a_download_killed_midway_leaves_no_file_a_later_run_loads(isolated):
    """SIGKILL in the middle of a download (an OOM kill, a pre-empted job) leaves huggingface_hub's
    `blobs/<sha256>.<8 hex>.incomplete` behind. The next run never takes it for the checkpoint:
    offline it says the file is not cached; online it downloads the whole file again, from its
    start (no resumed Range), including when an older huggingface_hub's `<sha256>.incomplete` (which
    those versions resumed from) holds bytes that are not the file's. Neither temporary file is
    deleted by entitysam: huggingface_hub wrote them, and one may be another process's download."""
    import signal

    data = os.urandom(24 << 20)  # (half of it is over one chunk huggingface_hub writes: 10 MiB)
    sha = hashlib.sha256(data).hexdigest()
    cache = isolated / "c"
    blobs = cache / f"models--{REPO_ID.replace('/', '--')}" / "blobs"
    stall = threading.Event()
    with _Hub({CHECKPOINT_FILES["vit-s"]: data}, stall=stall) as hub:
        env = dict(os.environ, HF_ENDPOINT=hub.endpoint, PYTHONPATH=str(Path(__file__).parents[1] / "src"))
        proc = subprocess.Popen([sys.executable, "-c", _RESOLVE_IN_A_PROCESS, str(cache)], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            _wait_for(lambda: any(p.stat().st_size for p in blobs.glob("*.incomplete")))
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.communicate(timeout=60)
            stall.set()
    killed = list(blobs.glob("*.incomplete"))
    assert len(killed) == 1 and not (blobs / sha).exists()
    with pytest.raises(ModelNotAvailableError, match="cannot get the vit-s checkpoint: it is not in the local cache"):
        resolve_checkpoint("vit-s", cache_dir=cache, download=False)
    (blobs / f"{sha}.incomplete").write_bytes(b"\0" * (len(data) // 2))  # an older version's, not the file's
    with _Hub({CHECKPOINT_FILES["vit-s"]: data}) as hub:
        path = resolve_checkpoint("vit-s", cache_dir=cache, endpoint=hub.endpoint)
    assert path.read_bytes() == data and hub.ranges == [None]
    assert killed[0].exists() and (blobs / f"{sha}.incomplete").exists()
    assert resolve_checkpoint("vit-s", cache_dir=cache, download=False) == path


def test_hf_hub_offline_makes_no_connection(isolated, monkeypatch):
    """HF_HUB_OFFLINE=1 and nothing cached: the reachability probe still connected to the
    endpoint (without network: waited for it), then the error blamed the network or said
    "download failed (OfflineModeIsEnabled ...)"."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        endpoint = f"http://127.0.0.1:{listener.getsockname()[1]}"
        with pytest.raises(ModelNotAvailableError, match="not in the local cache, and HF_HUB_OFFLINE forbids"):
            within(30, resolve_checkpoint, "vit-s", cache_dir=isolated / "c", endpoint=endpoint)
        listener.settimeout(0.5)
        with pytest.raises(socket.timeout):
            listener.accept()[0].close()  # a connection made while offline


def test_hf_hub_offline_uses_the_cache(isolated, monkeypatch):
    data = _checkpoint_bytes(isolated)
    with _Hub({CHECKPOINT_FILES["vit-s"]: data}) as hub:
        path = resolve_checkpoint("vit-s", cache_dir=isolated / "c", endpoint=hub.endpoint)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert resolve_checkpoint("vit-s", cache_dir=isolated / "c", endpoint="http://127.0.0.1:1") == path


@pytest.mark.parametrize("status, force, words", [
    (404, False, "the hub answered HTTP 404 Not Found: no such file at this endpoint (HF_ENDPOINT)"),
    (404, True, "the hub answered HTTP 404 Not Found: no such file at this endpoint (HF_ENDPOINT)"),
    (403, False, "the hub answered HTTP 403 Forbidden: access refused (HF_TOKEN)"),
    (401, True, "the hub answered HTTP 401 Unauthorized: the repository asks for a token (HF_TOKEN)"),
])
def test_http_error_names_the_status(isolated, capsys, monkeypatch, status, force, words):
    """A 403 or 404 said "LocalEntryNotFoundError: ... Please check your connection" (the network was
    fine), `download --force` said "ValueError: Force download failed due to the above error"."""
    with _Hub({}, status=status) as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
        rc = cli.main(["download", "vit-s", "--cache-dir", str(isolated / "c")] + ["--force"] * force)
    assert rc == 1
    err = capsys.readouterr().err
    assert f"error: cannot get the vit-s checkpoint: download failed ({words})\n" in err


def test_cache_folder_that_is_a_file_is_named(isolated):
    """(The library's words; `entitysam download` refuses such a --cache-dir before asking the hub.)"""
    from entitysam.errors import EntitySAMError

    data = _checkpoint_bytes(isolated)
    (isolated / "c").write_text("not a folder")
    with _Hub({CHECKPOINT_FILES["vit-s"]: data}) as hub:
        with pytest.raises(EntitySAMError) as info:
            resolve_checkpoint("vit-s", cache_dir=isolated / "c", endpoint=hub.endpoint)
    err = str(info.value)
    assert f"download failed (cannot write {isolated / 'c'}" in err
    assert "(Not a directory): the cache folder must be a writable folder" in err


@pytest.mark.parametrize("var, under", [("HF_HOME", "hf/hub"), ("HF_HUB_CACHE", "hf")])
def test_cache_variables_set_after_import_are_honoured(isolated, monkeypatch, var, under):
    """HF_HOME / HF_HUB_CACHE pointed at a scratch disk by a script after huggingface_hub was
    imported (by any library): the checkpoint still went into ~/.cache/huggingface."""
    importlib.import_module("huggingface_hub.constants")  # reads the variables now, before they are set

    data = _checkpoint_bytes(isolated)
    for other in ("HF_HOME", "HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        monkeypatch.delenv(other, raising=False)
    monkeypatch.setenv(var, str(isolated / "hf"))
    with _Hub({CHECKPOINT_FILES["vit-s"]: data}) as hub:
        path = resolve_checkpoint("vit-s", endpoint=hub.endpoint)
    assert str(path).startswith(str(isolated / under) + os.sep)


def test_another_models_file_in_a_published_models_place_says_which_and_what_to_do(isolated, monkeypatch, capsys):
    """A valid checkpoint of another model at vit-l's cache path (it passes the hash check: it is
    the hub's file under its own name) failed with CheckpointMismatchError listing hundreds of
    missing and unexpected keys, and no word of what the file was or what to do."""
    from entitysam.errors import CheckpointMismatchError
    from entitysam.pipeline.loading import from_pretrained

    data = _checkpoint_bytes(isolated)  # a 'tiny' model served as vit-l
    with _Hub({CHECKPOINT_FILES["vit-l"]: data}) as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
        with pytest.raises(CheckpointMismatchError) as err:
            from_pretrained("vit-l", cache_dir=isolated / "c")
        cached = resolve_checkpoint("vit-l", cache_dir=isolated / "c")
    msg = str(err.value)
    assert msg == (f"the cached vit-l checkpoint {cached} is not the vit-l model (it is a 'tiny' model): "
                   "delete it to download it again")
    assert err.value.fits == "tiny"
    # the command line says the same in one line
    monkeypatch.setenv("HF_HUB_CACHE", str(isolated / "c"))
    from PIL import Image
    Image.new("RGB", (32, 24)).save(isolated / "a.png")
    assert cli.main(["segment", str(isolated / "a.png"), "-o", str(isolated / "out"), "--model", "vit-l", "-q"]) == 1
    assert capsys.readouterr().err.strip().splitlines() == [f"error: {msg}"]
    # a file put by hand in the local folder, which is looked at first: a download would not replace it
    local = local_checkpoint_path("vit-l")
    local.parent.mkdir(parents=True)
    local.write_bytes(data)
    with pytest.raises(CheckpointMismatchError, match=r"it is a 'tiny' model\): delete it or put the vit-l "
                                                      "checkpoint there$"):
        from_pretrained("vit-l")


@pytest.mark.parametrize("kind", ["file", "pipe"])
def test_a_link_leading_outside_the_cache_never_deletes_that_file(isolated, kind):
    """A snapshot link leading outside the cache's blobs folder (made by hand, or a cache copied
    with its links) to a file named like a blob: a damaged one was deleted, a file the cache never
    wrote; now it is kept, the error names the link, and no download is tried (it would find the
    same link again and say "run again" for ever)."""
    data = _checkpoint_bytes(isolated)
    cache = isolated / "c"
    with _Hub({CHECKPOINT_FILES["vit-s"]: data}) as hub:
        link = resolve_checkpoint("vit-s", cache_dir=cache, endpoint=hub.endpoint)
        mine = isolated / "mine" / ("ab" * 32)
        mine.parent.mkdir()
        if kind == "file":
            mine.write_bytes(b"the user's own file")
        else:
            os.mkfifo(mine)
        link.unlink()
        link.symlink_to(mine)
        hub.requests.clear()
        with pytest.raises(ModelNotAvailableError, match=r"the cached file .*; not removed: it is no file of the "
                                                         r"cache \(the cache's link .* leads outside") as err:
            within(30, resolve_checkpoint, "vit-s", cache_dir=cache, endpoint=hub.endpoint)
        assert not hub.requests
    assert os.path.lexists(mine), "a file outside the cache was deleted"
    assert str(link) in str(err.value)


def test_a_damaged_blob_that_cannot_be_removed_is_not_downloaded_for_ever(isolated, monkeypatch):
    """A damaged blob in a folder this user cannot write: the download found it again and said
    "delete it ...; run again to download it again"; now it says to delete it, without a download."""
    data = _checkpoint_bytes(isolated)
    cache = isolated / "c"
    with _Hub({CHECKPOINT_FILES["vit-s"]: data}) as hub:
        blob = _blob(resolve_checkpoint("vit-s", cache_dir=cache, endpoint=hub.endpoint))
        blob.write_bytes(data[:1000])

        def refuse(self, *args, **kwargs):
            raise PermissionError(13, "Permission denied")
        monkeypatch.setattr(Path, "unlink", refuse)
        hub.requests.clear()
        with pytest.raises(ModelNotAvailableError) as err:
            resolve_checkpoint("vit-s", cache_dir=cache, endpoint=hub.endpoint)
        assert not any(method == "GET" for method, _ in hub.requests)
    assert "; delete it (it cannot be removed: Permission denied)" in str(err.value)
    assert "run again" not in str(err.value)


def test_a_good_blob_put_in_place_while_a_damaged_one_is_removed_is_kept(isolated, monkeypatch):
    """A process downloading the checkpoint again renames its finished file into the damaged
    blob's place (under huggingface_hub's lock of that blob); when that happened between this
    process's check of the blob and its removal, the good file was deleted and the downloading
    process was left a dangling link. Now the removal holds the same lock: the other process's
    rename waits for it, and the good file is kept. The other process acts at that very instant
    (just before the unlink), deterministically."""
    from filelock import FileLock, Timeout

    data = _checkpoint_bytes(isolated)
    cache = isolated / "c"
    with _Hub({CHECKPOINT_FILES["vit-s"]: data}) as hub:
        blob = _blob(resolve_checkpoint("vit-s", cache_dir=cache, endpoint=hub.endpoint))
    blob.write_bytes(data[:1000])
    lock = cache / ".locks" / f"models--{REPO_ID.replace('/', '--')}" / f"{blob.name}.lock"
    waited = []

    def other_process_renames_its_download_into_place():
        other = FileLock(str(lock))  # its own descriptor: excluded like another process
        try:
            other.acquire(blocking=False)
        except Timeout:
            waited.append(True)  # it waits for the lock; its rename comes after the removal
            return
        try:
            good = blob.with_name("download.incomplete")
            good.write_bytes(data)
            os.replace(good, blob)
        finally:
            other.release()

    real_unlink = Path.unlink

    def unlink(self, *args, **kwargs):
        if self == blob and not waited and os.path.exists(blob) and blob.stat().st_size != len(data):
            other_process_renames_its_download_into_place()
        return real_unlink(self, *args, **kwargs)

    monkeypatch.setattr(Path, "unlink", unlink)
    with pytest.raises(ModelNotAvailableError, match="is damaged"):
        resolve_checkpoint("vit-s", cache_dir=cache, download=False)
    monkeypatch.undo()
    if waited:  # the other process got the lock once the removal let go of it
        with FileLock(str(lock)):
            blob.with_name("download.incomplete").write_bytes(data)
            os.replace(blob.with_name("download.incomplete"), blob)
    assert blob.is_file() and blob.read_bytes() == data, "the good download was deleted"
    assert waited, "the removal did not hold huggingface_hub's lock of the blob"
    assert resolve_checkpoint("vit-s", cache_dir=cache, download=False).read_bytes() == data


@pytest.fixture
def slow_cache(isolated, monkeypatch):
    """A cache holding the vit-s checkpoint on "a slow network file system": its first read takes
    2.1 s, past the 2 s after which a check is announced (elapsed time only grows: no race)."""
    import time

    import entitysam.hub as hub_module

    data = _checkpoint_bytes(isolated)
    cache = isolated / "c"
    with _Hub({CHECKPOINT_FILES["vit-s"]: data}) as hub:
        resolve_checkpoint("vit-s", cache_dir=cache, endpoint=hub.endpoint)
    real_open = hub_module.open_regular

    class Slow:
        def __init__(self, f):
            self.f, self.first = f, True

        def readinto(self, buf):
            if self.first:
                self.first = False
                time.sleep(2.1)
            return self.f.readinto(buf)

        def __getattr__(self, name):
            return getattr(self.f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    def slow_open(*args, **kwargs):
        f = real_open(*args, **kwargs)
        return None if f is None else Slow(f)

    monkeypatch.setattr(hub_module, "open_regular", slow_open)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{refusing_port()}")
    return cache


def test_a_slow_check_of_the_cached_checkpoint_says_what_it_does(slow_cache):
    """Hashing a multi-GB checkpoint on a slow network file system took minutes without a word;
    now one line says what is happening once it takes over 2 s."""
    said = []
    assert resolve_checkpoint("vit-s", cache_dir=slow_cache, download=False, say=said.append).is_file()
    assert len(said) == 1 and said[0].startswith("checking the cached vit-s checkpoint (") and "MB)" in said[0]
    assert resolve_checkpoint("vit-s", cache_dir=slow_cache, download=False).is_file()  # say=None: silent


def test_a_fast_check_says_nothing(isolated):
    data = _checkpoint_bytes(isolated)
    said = []
    with _Hub({CHECKPOINT_FILES["vit-s"]: data}) as hub:
        resolve_checkpoint("vit-s", cache_dir=isolated / "c", endpoint=hub.endpoint, say=said.append)
    assert resolve_checkpoint("vit-s", cache_dir=isolated / "c", download=False, say=said.append).is_file()
    assert not said


@pytest.mark.parametrize("quiet", [False, True])
def test_segment_says_it_checks_a_slow_cached_checkpoint_unless_quiet(slow_cache, capsys, quiet):
    from PIL import Image

    Image.new("RGB", (32, 24)).save(slow_cache.parent / "a.png")
    cli.main(["segment", str(slow_cache.parent / "a.png"), "-o", str(slow_cache.parent / "out"), "--model", "vit-s",
              *(["-q"] if quiet else [])])  # the cached file is a tiny model: refused after the check
    said = "checking the cached vit-s checkpoint (" in capsys.readouterr().err
    assert said is not quiet
