"""The training loop: AdamW, warm-up + step schedule, clipping, AMP, accumulation, DDP,
checkpoints in the official format and exact resume.

Batching. `solver.ims_per_batch` = B clips per iteration over all W processes; each process runs
A = B / W clips one after the other (the model's forward takes one clip, as the official one) and
accumulates their gradients; DDP averages over processes. The gradient is therefore
(1/B) sum_c grad L_c for every W, which is the official update when A = 1 (4 GPUs, batch 4). The
mask-loss normaliser is num_masks = max(#entities in the global batch / B, 1) * T (official:
all-reduced count / world size, with one clip per process).

Randomness. Clip p of the global stream (iteration i, clip j: p = i B + j) has its data drawn
from (seed, p) and the global torch RNG is re-seeded from (seed, p) before its forward (matcher
points, loss points, memory-attention dropout). Results therefore do not depend on W or on the
number of data workers, and a resumed run continues bit-identically on the same hardware.

Checkpoints (rank 0): `output_dir/model_{iteration:07d}.pth` whenever (iteration + 1) is a
multiple of `solver.checkpoint_period`, and `model_final.pth` at the end, each
`{"model": full state dict, "trainer": {...}, "iteration": i}` (detectron2's layout; the
official evaluation and `entitysam.checkpoints.load_entitysam` read `"model"`), plus a
`last_checkpoint` file naming the newest one.
"""

from __future__ import annotations

import contextlib
import gc
import inspect
import logging
import math
import time
import traceback
import weakref
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel

from ..errors import (CheckpointMismatchError, EntitySAMError, InvalidArgumentError, OutputError, TrainingDivergedError,
                      printable)
from ..io.atomic import atomic_file, write_text_atomic
from ..io.staging import remove_dead_temp_files
from ..modeling.entitysam import EntitySAM
from ..regular_file import open_regular_for_writing
from .config import TrainConfig
from .criterion import Criterion, HungarianMatcher
from .data import ClipDataset, DatasetError, build_loader, clip_seed, clip_targets, normalize_images, read_panoptic_dataset
from .dataset_index import entity_shortage
from .distributed import DistInfo, all_reduce_sum, init_distributed
from .failstop import RankFailedError, agree, failure_flags, held, settle, stop
from .forward import TrainingModule
from .logger import LOSS_KEYS, MetricWriter, Progress, log_file_failure, setup_logging
from .resume import find_resume_checkpoint, load_trainer_state, resume_state, trainer_state
from .run_lock import RunLock
from .setup import build_model, build_optimizer, build_scheduler, clip_gradients, model_config, set_trainable

log = logging.getLogger("entitysam.train")


def build_criterion(cfg: TrainConfig) -> Criterion:
    lc = cfg.loss
    matcher = HungarianMatcher(lc.matcher_class, lc.matcher_mask, lc.matcher_dice, lc.num_points)
    return Criterion(matcher, lc.criterion_config())


def write_failure(err: BaseException) -> OSError | None:
    # torch.save's zip writer, closed after a write failed part-way (a full disk), raises a
    # RuntimeError ("unexpected pos 704 vs 598") in place of the OSError, which is its context
    while err is not None and not isinstance(err, OSError):
        err = err.__context__
    return err


def loader_failure(err: Exception, workers: int) -> Exception:
    """`err` from the data loader, as the run reports it: a worker process that died (the kernel's
    out-of-memory killer, most often) was torch's RuntimeError with a traceback of the loader."""
    if isinstance(err, RuntimeError) and str(err).startswith("DataLoader worker"):
        return EntitySAMError(f"a data loader process stopped: {printable(str(err), 300)} (killed for lack of "
                              f"memory? data.num_workers={workers}: fewer use less)")
    return err


class Trainer:
    """One training run of `cfg` on this process (rank `dist_info`, default torchrun's): the model,
    optimizer, schedule, DDP wrapper and resume state. Each iteration takes A = B / W clips, each
    images uint8 [T, 3, S, S] and instance_map [T, S, S] (`ClipDataset`); see the module docstring."""

    def __init__(self, cfg: TrainConfig, dist_info: DistInfo | None = None, quiet: bool = False):
        self.cfg = cfg
        if cfg.num_threads > 0:
            torch.set_num_threads(cfg.num_threads)
        self.dist = dist_info or init_distributed(cfg.device)
        self.device = self.dist.device
        self.quiet = quiet
        self.output_dir = Path(cfg.output_dir)
        world = self.dist.world_size
        if cfg.solver.ims_per_batch % world:  # every rank finds it alike: no rank waits for another
            raise InvalidArgumentError(f"solver.ims_per_batch={cfg.solver.ims_per_batch} is not divisible by the "
                                       f"{world} processes: set it to a multiple of {world}")
        self.clips_per_rank = cfg.solver.ims_per_batch // world
        self._run_lock = RunLock(self.output_dir)  # rank 0's, until close()
        weakref.finalize(self, self._run_lock.release)
        try:
            self._set_up(cfg)
        except BaseException:
            self.close()
            raise

    def _set_up(self, cfg: TrainConfig) -> None:
        # An error of one rank is held until every rank agrees (failstop): raised at once, it
        # would leave the others waiting in their next collective operation.
        agree(held(self._prepare_output) if self.dist.is_main else None, self.dist)
        resume = find_resume_checkpoint(cfg)
        # the first process of each node downloads missing pretrained files, the others wait
        # (a resumed run downloads nothing)
        first = resume is not None or self.dist.local_rank == 0
        agree(held(self._set_up_model, resume, True) if first else None, self.dist)
        agree(None if first else held(self._set_up_model, resume, False), self.dist)
        self.ddp = None
        if self.dist.distributed:
            # Official: broadcast_buffers=False, find_unused_parameters=True (cls_prediction_head never
            # gets a gradient, offset_fc none with one-frame clips). The only buffer (the prompt
            # encoder's Fourier matrix) is identical on every rank, so syncing it once is harmless.
            sync = ({"forward_sync_buffers": False}
                    if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
                    else {"broadcast_buffers": False})
            self.ddp = DistributedDataParallel(
                self.module, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=True, **sync)
        self.records: list[dict] = []

    def close(self) -> None:
        """Release output_dir for other runs (done at the end of `train`, when the trainer is
        freed, or when the process ends)."""
        self._run_lock.release()

    def _prepare_output(self) -> None:
        path = self.output_dir
        self._run_lock.take()
        try:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            # a checkpoint's temporary file left by a run killed while saving (SIGKILL, a preempted
            # job): hidden, as large as a checkpoint, and kept for ever by every rerun
            remove_dead_temp_files(self.output_dir)
            path = self.output_dir / "config.json"
            with open_regular_for_writing(path) as f:  # (a named pipe there waited for a reader for ever)
                f.write(self.cfg.to_json())
            path = self.output_dir / "log.txt"
            setup_logging(self.output_dir, console=not self.quiet)
        except OSError as err:  # a full disk: was an OSError traceback before anything was trained
            raise OutputError(f"cannot write {path}: {err.strerror or err}") from None

    def _set_up_model(self, resume: str | None, first: bool) -> None:
        """The model (built, or read from `resume`), its optimizer, schedule and scaler."""
        cfg = self.cfg
        state = None
        if resume:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(cfg.seed)
                model = EntitySAM(model_config(cfg))
            state = resume_state(resume, model)
        else:
            model = build_model(cfg, is_main=first)
        self.model = model.to(self.device).train()
        self.trainable = set_trainable(self.model, cfg.model.trainable)
        self.criterion = build_criterion(cfg)
        self.module = TrainingModule(self.model, self.criterion, cfg.model.memory_grad)
        self.optimizer = build_optimizer(self.model, cfg)
        self.scheduler = build_scheduler(self.optimizer, cfg)
        cuda = self.device.type == "cuda"
        self.amp_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(cfg.solver.amp) if cuda else None
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)
        self.start_iter = 0
        if state is not None:
            try:
                self._load_trainer_state(state)
            except (KeyError, TypeError, ValueError, IndexError, AttributeError, RuntimeError, ArithmeticError,
                    RecursionError) as err:
                raise CheckpointMismatchError(f"cannot resume from {resume}: its trainer state does not fit this run "
                                              f"({printable(f'{type(err).__name__}: {err}')})") from None
            log.info("resumed from %s at iteration %d", resume, self.start_iter)

    # ------------------------------------------------------------------ state
    def _trainer_state(self, iteration: int) -> dict:
        return trainer_state(iteration, self.optimizer, self.scheduler, self.scaler, self.dist.world_size,
                             self.cfg.to_json())

    def _load_trainer_state(self, state: dict) -> None:
        load_trainer_state(state["trainer"], self.optimizer, self.scheduler, self.scaler, self.cfg)
        self.start_iter = int(state["iteration"]) + 1

    def save_checkpoint(self, name: str, iteration: int) -> Path | None:
        if not self.dist.is_main:
            return None
        path = self.output_dir / f"{name}.pth"
        try:
            with atomic_file(path) as f:  # a run killed while saving keeps the previous checkpoint
                torch.save({"model": self.model.state_dict(), "trainer": self._trainer_state(iteration),
                            "iteration": iteration}, f)
            write_text_atomic(self.output_dir / "last_checkpoint", path.name)
        except (OSError, RuntimeError) as err:  # a full disk, a folder in the way: one line, not a traceback
            # Ctrl-C (or SIGTERM) inside torch.save: its zip writer's cleanup then fails ("unexpected
            # pos") and that error hid the interrupt, which ended the run with a traceback
            if isinstance(err.__context__, KeyboardInterrupt):
                raise err.__context__ from None
            cause = write_failure(err)
            if cause is None:
                raise
            raise OutputError(f"cannot write the checkpoint {path}: {cause.strerror or cause}") from None
        log.info("saved %s", path)
        return path

    # ------------------------------------------------------------------ loop
    def _autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type="cuda", dtype=self.amp_dtype)

    def run_iteration(self, clips: list[dict], error: BaseException | None = None) -> dict:
        """One update from this rank's `clips`; `error`: this rank's held error (failstop), raised
        here once every rank knows, as `RankFailedError` on the others."""
        cfg = self.cfg
        batch = cfg.solver.ims_per_batch
        frames = cfg.data.frames
        n_local = sum(c["num_instances"] for c in clips)
        # the count's all-reduce is also the agreement on whether a rank failed: no added operation
        counts = all_reduce_sum([float(n_local), *failure_flags(error, self.dist.rank, self.dist.world_size)],
                                self.device)
        settle(counts[1:], self.dist.rank, error)
        n_total = counts[0]
        num_masks = max(n_total / batch, 1.0) * frames

        self.optimizer.zero_grad(set_to_none=True)
        sums = dict.fromkeys(LOSS_KEYS, 0.0)
        matched, iou_sum, iou_n = 0.0, 0.0, 0.0
        forward = self.ddp if self.ddp is not None else self.module
        for j, clip in enumerate(clips):
            torch.manual_seed(clip_seed(cfg.seed, clip["position"]))
            images = normalize_images(clip["images"].to(self.device))
            targets = clip_targets(clip, self.device)
            last = j == len(clips) - 1
            sync = self.ddp.no_sync() if (self.ddp is not None and not last) else contextlib.nullcontext()
            with sync:
                with self._autocast():
                    losses = forward(images, targets, num_masks)
                    loss = sum(losses.values())
                scaled = loss / len(clips) if len(clips) > 1 else loss
                self.scaler.scale(scaled).backward()
            for k in LOSS_KEYS:
                sums[k] += float(losses[k].detach())
            st = self.module.last_stats
            matched += st["num_matched"]
            if st["num_matched"] and math.isfinite(st["matched_iou"]):
                iou_sum += st["matched_iou"] * st["num_matched"]
                iou_n += st["num_matched"]

        red = all_reduce_sum([sums[k] for k in LOSS_KEYS] + [matched, iou_sum, iou_n], self.device)
        loss_means = {k: red[i] / batch for i, k in enumerate(LOSS_KEYS)}
        total = sum(loss_means.values())
        if not math.isfinite(total):  # every rank sees the reduced loss: rank 0 alone says why
            if not self.dist.is_main:
                raise RankFailedError(f"rank {self.dist.rank} stopped: the loss is not finite (rank 0 says why)")
            raise TrainingDivergedError("the loss became infinite or NaN ("
                                        + ", ".join(f"{k} {v:.4g}" for k, v in loss_means.items()) + ")")
        if self.scaler.is_enabled():
            self.scaler.unscale_(self.optimizer)
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        grad_norm = clip_gradients(params, cfg.solver.clip_grad_norm)
        lr = self.optimizer.param_groups[0]["lr"]
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        return {
            "lr": lr, "total_loss": total, **loss_means,
            "num_instances": n_total / batch, "num_matched": red[-3] / batch,
            "matched_iou": red[-2] / red[-1] if red[-1] else float("nan"),
            "grad_norm": grad_norm,
        }

    def train(self) -> list[dict]:
        """Iterations start_iter .. max_iter - 1, checkpoints as configured: one record per
        iteration ({"iteration", "lr", "total_loss", the losses, ..., "time"}: the keys of metrics.jsonl)."""
        try:
            # (taken again by a second call: the first released it)
            agree(held(self._run_lock.take) if self.dist.is_main else None, self.dist)
            return self._train()
        finally:
            self.close()

    def _train(self) -> list[dict]:
        cfg = self.cfg
        max_iter = cfg.solver.max_iter
        if self.start_iter >= max_iter:
            log.info("nothing to do: iteration %d >= max_iter %d", self.start_iter, max_iter)
            if self.start_iter == max_iter and not (self.output_dir / "model_final.pth").exists():
                # the run ended while writing model_final.pth (a full disk, Ctrl-C): resumed from the
                # periodic checkpoint of the last iteration, it had nothing to train and never wrote it
                self.save_checkpoint("model_final", max_iter - 1)
            return []
        # this rank's error, raised at the next agreement (failstop)
        writer, data_iter, held_error = None, None, None
        try:
            recs = read_panoptic_dataset(Path(cfg.data.root), cfg.data.image_dir, cfg.data.panoptic_dir, cfg.data.json)
            dataset = ClipDataset(recs, cfg.data, cfg.data.frames, self.model.cfg.image_size, cfg.seed)
            loader = build_loader(dataset, cfg.solver.ims_per_batch, self.dist.rank, self.dist.world_size,
                                  self.start_iter, cfg.data.num_workers)
            writer = MetricWriter(self.output_dir, self.start_iter, cfg.tensorboard) if self.dist.is_main else None
        except Exception as err:  # noqa: BLE001 - held for the agreement
            held_error = err
        progress = Progress(self.start_iter, max_iter)
        try:
            agree(held_error, self.dist)
            if self.dist.is_main:
                log.info("training %s: %d images, iterations %d..%d, %d clip(s) x %d frame(s) per iteration over "
                         "%d process(es), %d trainable tensors, device %s", cfg.name, len(recs), self.start_iter,
                         max_iter, cfg.solver.ims_per_batch, cfg.data.frames, self.dist.world_size,
                         len(self.trainable), self.device)
                if shortage := entity_shortage(recs):  # trains, but likely on a dataset that lost its segments
                    log.warning(shortage)
            data_iter = iter(loader)
            for it in range(self.start_iter, max_iter):
                t0 = time.perf_counter()
                clips = []
                if held_error is None:
                    try:
                        clips = next(data_iter)
                        for clip in clips:  # an unusable image or PNG (see ClipDataset.__getitem__)
                            if "error" in clip:
                                raise DatasetError(clip["error"])
                    except Exception as err:  # noqa: BLE001 - a loader worker's crash too
                        held_error, clips = loader_failure(err, cfg.data.num_workers), []
                t_data = time.perf_counter() - t0
                try:
                    rec = self.run_iteration(clips, held_error)
                except TrainingDivergedError as err:
                    raise TrainingDivergedError(f"training diverged at iteration {it}: {err.problem}; "
                                                + self._divergence_advice()) from None
                elapsed = time.perf_counter() - t0
                progress.tick(elapsed)
                rec = {"iteration": it, **rec, "time": elapsed, "data_time": t_data,
                       "eta_seconds": progress.eta(it)}
                self.records.append(rec)
                held_error = held(self._log_and_save, rec, writer, progress)
            agree(held_error, self.dist)
        except Exception as err:
            final = stop(err, held_error, self.dist, release=self._release_group)
            if final is err:
                raise
            raise final from None
        finally:
            if writer is not None:
                writer.close()
            data_iter = None  # ends the loader's worker processes
        return self.records

    def _divergence_advice(self) -> str:
        solver = self.cfg.solver
        advice = [f"lower solver.base_lr (now {solver.base_lr:g})"]
        if solver.clip_grad_norm <= 0:
            advice.append("clip gradients (solver.clip_grad_norm > 0; the official value is 0.01)")
        if self.amp_dtype == torch.float16:
            advice.append("train in bfloat16 (solver.amp=bf16: float16 overflows)")
        what = advice[0] if len(advice) == 1 else ", ".join(advice[:-1]) + " or " + advice[-1]
        return what + "; checkpoints written before stay, and a rerun resumes from the last of them"

    def _release_group(self, err: BaseException) -> None:
        """Drop this trainer's references to the process group (DDP's reducer holds it, and so do
        the frames of `err`'s traceback): gloo closes its connections, which ends the other ranks'
        waiting operations, only when the group object is freed."""
        self.ddp = None
        traceback.clear_frames(err.__traceback__)
        gc.collect()

    def _log_and_save(self, rec: dict, writer: MetricWriter | None, progress: Progress) -> None:
        cfg, it = self.cfg, rec["iteration"]
        last = it == cfg.solver.max_iter - 1
        if writer is not None and ((it + 1) % cfg.log_period == 0 or last or it == self.start_iter):
            writer.write(rec)
            if not self.quiet:
                progress.print(rec)
        if (it + 1) % cfg.solver.checkpoint_period == 0:
            self.save_checkpoint(f"model_{it:07d}", it)
        if last:
            self.save_checkpoint("model_final", it)
        if (failure := log_file_failure()) is not None:  # log.txt ends the run as metrics.jsonl does
            raise failure


def train(cfg: TrainConfig, quiet: bool = False) -> list[dict]:
    """Run (or resume) a training run described by `cfg`; returns the per-iteration records."""
    return Trainer(cfg, quiet=quiet).train()
