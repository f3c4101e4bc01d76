"""Metric logging (JSONL and CSV always, TensorBoard when installed) and progress with ETA."""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import sys
import time
from collections import deque
from pathlib import Path

from .. import jsonio
from ..errors import OutputError
from ..regular_file import open_regular_for_writing

_log = logging.getLogger("entitysam.train")
LOSS_KEYS = ("loss_ce", "loss_mask", "loss_dice", "loss_iou")
CSV_FIELDS = ("iteration", "lr", "total_loss", *LOSS_KEYS, "num_instances", "num_matched", "matched_iou",
              "grad_norm", "time", "data_time", "eta_seconds")


def _iteration(value) -> int | None:
    """A record's iteration: a whole number (an int, or the CSV's text of one), else None."""
    if isinstance(value, str) and value.strip().isascii() and value.strip().isdigit():  # not '²'
        return int(value)
    return value if type(value) is int else None


def _before(value, start_iter: int) -> bool:
    """Whether a record of iteration `value` is kept by a run resumed at start_iter. A record that
    names no iteration (a half line of a killed run, a line edited by hand, bytes that are not
    text) is dropped: it was a traceback (AttributeError, ValueError) before the run resumed."""
    it = _iteration(value)
    return it is not None and it < start_iter


def _truncate_jsonl(path: Path, start_iter: int) -> None:
    """Keep only records of iterations < start_iter (a resumed run rewrites the rest)."""
    if not path.is_file():
        return
    keep = []
    for line in path.read_bytes().decode("utf-8", "replace").splitlines():
        try:
            record = json.loads(line)
        except (ValueError, RecursionError):
            continue
        if isinstance(record, dict) and _before(record.get("iteration"), start_iter):
            keep.append(line)
    path.write_text("".join(k + "\n" for k in keep), encoding="utf-8")


def _truncate_csv(path: Path, start_iter: int) -> None:
    if not path.is_file():
        return
    # (a NUL stopped Python 3.10's csv reader: a damaged character, as bytes that are not UTF-8)
    text = path.read_bytes().decode("utf-8", "replace").replace("\0", "\ufffd")
    if not text.endswith("\n"):  # a killed run's half row: "20" of "200,..." read as iteration 20
        text = text[:text.rfind("\n") + 1]
    rows = []
    try:
        rows += (r for r in csv.DictReader(io.StringIO(text, newline=""))
                 if _before(r.get("iteration"), start_iter) and None not in r and None not in r.values())
    except csv.Error:  # a field over csv's size limit: the rows before it are kept
        pass
    # (UTF-8, as it is read: a damaged byte kept as U+FFFD failed in an ASCII or cp1252 locale)
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=CSV_FIELDS, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)


class LogFile(logging.FileHandler):
    """output_dir/log.txt. A record it cannot write (a full disk) is kept as `failure`, not printed:
    logging's own handler printed "--- Logging error ---" and a traceback for every record while
    training went on. The trainer then stops the run (`log_file_failure`), as for metrics.jsonl."""

    def __init__(self, path: Path):
        super().__init__(path)
        self.path = path
        self.failure: OSError | None = None

    def _open(self):
        """log.txt refused unless a regular file (a named pipe there: the run waited for a reader)."""
        return open_regular_for_writing(self.baseFilename, append=True, encoding=self.encoding, errors=self.errors)

    def handleError(self, record: logging.LogRecord) -> None:
        err = sys.exc_info()[1]
        if not isinstance(err, OSError):
            super().handleError(record)  # a mistake in a log call, not the disk: logging's report helps
        elif self.failure is None:
            self.failure = err

    def close(self) -> None:
        try:
            super().close()
        except OSError:  # the buffer a full disk refused, flushed once more: already a failure
            pass


def log_file_failure() -> OutputError | None:
    """The error that ends the run when log.txt could not be written (see LogFile), else None."""
    for h in _log.handlers:
        if isinstance(h, LogFile) and h.failure is not None:
            return OutputError(f"cannot write the training log {h.path}: {h.failure.strerror or h.failure}")
    return None


def setup_logging(output_dir: Path, console: bool) -> None:
    """Rank 0: log to output_dir/log.txt and to stderr (only warnings when quiet: quiet drops the
    progress, not what the user must know); replaces earlier handlers."""
    for h in [h for h in _log.handlers if getattr(h, "_entitysam", False)]:
        _log.removeHandler(h)
        h.close()
    _log.setLevel(logging.INFO)
    _log.propagate = False
    handlers: list[logging.Handler] = [LogFile(output_dir / "log.txt")]
    handlers[0].setFormatter(logging.Formatter("[%(asctime)s] %(message)s"))
    handlers.append(logging.StreamHandler())
    handlers[-1].setFormatter(logging.Formatter("[entitysam.train] %(message)s"))
    handlers[-1].setLevel(logging.INFO if console else logging.WARNING)
    for h in handlers:
        h._entitysam = True  # type: ignore[attr-defined]
        _log.addHandler(h)


class MetricWriter:
    """Writes one record per logged iteration to metrics.jsonl, metrics.csv and TensorBoard."""

    def __init__(self, output_dir: str | Path, start_iter: int = 0, tensorboard: bool = True):
        try:
            self._open(Path(output_dir), start_iter, tensorboard)
        except OSError as err:  # a full disk: was an OSError traceback
            where = err.filename or f"in {output_dir}"  # write(2) names no file
            raise OutputError(f"cannot write the training log {where}: {err.strerror or err}") from None

    def _open(self, output_dir: Path, start_iter: int, tensorboard: bool) -> None:
        self.dir = output_dir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.jsonl = self.dir / "metrics.jsonl"
        self.csv = self.dir / "metrics.csv"
        _truncate_jsonl(self.jsonl, start_iter)
        _truncate_csv(self.csv, start_iter)
        new_csv = not self.csv.is_file()
        # (a named pipe in their place: opening it waited for a reader for ever)
        self._csv_file = open_regular_for_writing(self.csv, append=True, newline="", encoding="utf-8")
        self._csv = csv.DictWriter(self._csv_file, fieldnames=CSV_FIELDS, extrasaction="ignore")
        if new_csv:
            self._csv.writeheader()
        self._jsonl_file = open_regular_for_writing(self.jsonl, append=True)
        self._tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter  # noqa: PLC0415

                self._tb = SummaryWriter(str(self.dir / "tensorboard"), purge_step=start_iter)
            except Exception:  # noqa: BLE001 - tensorboard not installed
                self._tb = None

    def write(self, record: dict) -> None:
        # A NaN / infinite loss is logged as null: NaN is not JSON (readers reject the whole file).
        path = self.jsonl
        try:  # a full disk stopped the run with an OSError traceback
            self._jsonl_file.write(jsonio.dumps(jsonio.nulls_for_non_finite(record), ensure_ascii=True) + "\n")
            self._jsonl_file.flush()
            path = self.csv
            self._csv.writerow({k: record.get(k, "") for k in CSV_FIELDS})
            self._csv_file.flush()
        except OSError as err:
            raise OutputError(f"cannot write the training log {path}: {err.strerror or err}") from None
        if self._tb is not None:
            it = record["iteration"]
            for k, v in record.items():
                if k != "iteration" and isinstance(v, (int, float)) and math.isfinite(v):
                    self._tb.add_scalar(k if k.startswith(("loss", "total")) else f"train/{k}", v, it)

    def close(self) -> None:
        self._jsonl_file.close()
        self._csv_file.close()
        if self._tb is not None:
            self._tb.close()


class Progress:
    """Seconds per iteration (median of the last 20) and ETA."""

    def __init__(self, start_iter: int, max_iter: int, stream=None):
        self.start_iter, self.max_iter = start_iter, max_iter
        self.times: deque[float] = deque(maxlen=20)
        self.stream = stream
        self.t0 = time.perf_counter()

    def tick(self, seconds: float) -> None:
        self.times.append(seconds)

    def eta(self, iteration: int) -> float:
        if not self.times:
            return float("nan")
        per = sorted(self.times)[len(self.times) // 2]
        return per * (self.max_iter - iteration - 1)

    def line(self, record: dict) -> str:
        eta = record.get("eta_seconds", float("nan"))
        eta_s = "?" if not math.isfinite(eta) else time.strftime("%H:%M:%S", time.gmtime(eta))
        if math.isfinite(eta) and eta >= 86400:
            eta_s = f"{int(eta // 86400)}d " + eta_s
        losses = " ".join(f"{k[5:]} {record[k]:.4f}" for k in LOSS_KEYS if k in record)
        return (f"iter {record['iteration'] + 1}/{self.max_iter}  loss {record['total_loss']:.4f} ({losses})  "
                f"lr {record['lr']:.3g}  {record['time']:.2f} s/it  ETA {eta_s}")

    def print(self, record: dict) -> None:
        # sys.stdout when printing, not when the module was imported: it may have been replaced since
        print(self.line(record), file=self.stream or sys.stdout, flush=True)
