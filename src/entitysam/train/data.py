"""Training data: COCO-panoptic-layout datasets turned into pseudo-video clips.

Layout (COCO panoptic, and the same for user data)::

    <root>/<image_dir>/<image file>                       (JPEG/PNG, EXIF orientation applied)
    <root>/<panoptic_dir>/<ann file_name>.png             RGB ids: id = R + 256 G + 65536 B, 0 = none
    <root>/<json>   {"images": [{"id", "file_name", ...}], "annotations": [{"image_id", "file_name",
                     "segments_info": [{"id", "category_id", "iscrowd", ...}]}], "categories": [...]}

Categories are ignored (class-agnostic: every non-crowd segment is an entity); crowd segments
are dropped (their pixels are simply not part of any target), as the official mapper does.

One image becomes a clip of T frames (the official `OpenVocabularyCocoPanoClipDatasetMapper` with
the LSJ augmentation list): per clip one horizontal-flip decision, T rotation angles in
[-15, 15] degrees (sorted, reversed with probability 0.5) around one random centre, one
large-scale-jitter scale in [0.25, 4], a random crop offset for frame 0 and a jittered offset
(+-10 % of the image size around frame 0's) for later frames; then padding to S x S. Identities
are kept across the clip: instance k is the k-th non-crowd segment in every frame.

Randomness: clip number p of the global stream (iteration i, clip j of the global batch:
p = i * batch + j) uses `numpy.random.default_rng([seed, p])` for its augmentation and
`shuffle_order(seed, epoch)` decides which image it is. Both are functions of (seed, p) only, so
results do not depend on the number of processes or data-loader workers, and resuming at
iteration i reproduces the same clips.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np
import torch
from PIL import Image, ImageOps

from ..io.idpng import decode_ids
from .dataset_index import read_panoptic_dataset
from .samples import DatasetError, PanopticRecord, load_pair, load_rgb


# ---------------------------------------------------------------------------- augmentation
@dataclass
class ClipAugmentation:
    """The per-clip random draws (official order: flip, rotation, scale, crop)."""

    flip: bool
    angles: np.ndarray  # [T] degrees, counter-clockwise
    center: tuple[float, float]  # relative (x, y)
    scale: float
    crop_u: float
    jitter: np.ndarray  # [T, 2] uniforms for frames >= 1 (row 0 unused)

    @classmethod
    def draw(cls, rng: np.random.Generator, frames: int, data) -> "ClipAugmentation":
        if not data.augment:
            return cls(False, np.zeros(frames), (0.5, 0.5), 1.0, 0.0, np.full((frames, 2), 0.5))
        flip = bool(rng.uniform() < data.flip_prob)
        angles = np.sort(rng.uniform(-data.rotation, data.rotation, size=frames))
        lo, hi = data.rotation_center
        center = (float(rng.uniform(lo, hi)), float(rng.uniform(lo, hi)))
        if rng.uniform() < 0.5:
            angles = angles[::-1].copy()
        scale = float(rng.uniform(data.min_scale, data.max_scale))
        crop_u = float(rng.uniform())
        jitter = np.full((frames, 2), 0.5)
        for t in range(1, frames):
            jitter[t] = rng.random(2)
        return cls(flip, angles, center, scale, crop_u, jitter)


def _rotate(img: Image.Image, angle: float, center: tuple[float, float], resample) -> Image.Image:
    if angle % 360 == 0:
        return img
    w, h = img.size
    # detectron2 rotates with cv2 around (w cx, h cy) in pixel-index coordinates; PIL's
    # coordinates put pixel centres at +0.5, hence the shift.
    c = (w * center[0] + 0.5, h * center[1] + 0.5)
    fill = 0 if img.mode in ("L", "I") else (0,) * len(img.getbands())
    return img.rotate(angle, resample=resample, expand=False, center=c, fillcolor=fill)


def _crop_pad(arr: np.ndarray, offset: tuple[int, int], size: int) -> np.ndarray:
    """Crop [size, size] at offset (y, x) (clipped to the array) and pad bottom/right with 0."""
    y, x = offset
    crop = arr[y:y + size, x:x + size]
    if crop.shape[0] == size and crop.shape[1] == size:
        return np.ascontiguousarray(crop)
    out = np.zeros((size, size) + arr.shape[2:], dtype=arr.dtype)
    out[:crop.shape[0], :crop.shape[1]] = crop
    return out


def make_clip(image: np.ndarray, panoptic_rgb: np.ndarray, segment_ids: Sequence[int], aug: ClipAugmentation,
              frames: int, size: int, max_instances: int, temporal_shift: float = 0.1) -> dict:
    """One image + its panoptic PNG -> a clip.

    Returns images uint8 [T, 3, S, S], instance map int16 [T, S, S] (0 = none, k = k-th kept
    instance), ids int64 [N, T] (instance index, -1 where absent in that frame), and N.
    """
    img = Image.fromarray(image)
    pan = Image.fromarray(panoptic_rgb)
    if aug.flip:
        img, pan = ImageOps.mirror(img), ImageOps.mirror(pan)
    h, w = image.shape[:2]
    f = min(size * aug.scale / h, size * aug.scale / w)
    # at least one pixel: an image over 500 times wider than tall rounded to 0 rows, and
    # Image.resize stopped the training with a ValueError traceback
    new_h, new_w = max(1, int(np.round(h * f))), max(1, int(np.round(w * f)))
    max_off = np.maximum(np.array([new_h, new_w]) - size, 0)
    first = np.round(max_off * aug.crop_u).astype(int)
    shift_range = np.minimum(max_off, int(temporal_shift * size))

    lookup = {sid: k + 1 for k, sid in enumerate(segment_ids)}
    out_images = np.zeros((frames, 3, size, size), dtype=np.uint8)
    out_maps = np.zeros((frames, size, size), dtype=np.int32)
    for t in range(frames):
        it = _rotate(img, float(aug.angles[t]), aug.center, Image.BILINEAR)
        pt = _rotate(pan, float(aug.angles[t]), aug.center, Image.NEAREST)
        if (new_w, new_h) != it.size:
            it = it.resize((new_w, new_h), Image.BILINEAR)
            pt = pt.resize((new_w, new_h), Image.NEAREST)
        if t == 0:
            off = first
        else:
            delta = ((aug.jitter[t] * 2 - 1) * shift_range).astype(int)  # truncation, as official
            off = np.minimum(np.maximum(first + delta, 0), max_off)
        off = (int(off[0]), int(off[1]))
        out_images[t] = _crop_pad(np.asarray(it), off, size).transpose(2, 0, 1)
        ids = _crop_pad(decode_ids(np.asarray(pt)), off, size)
        # segment id -> instance number (non-crowd segments in file order), others 0
        uniq, inv = np.unique(ids, return_inverse=True)
        table = np.array([lookup.get(int(u), 0) for u in uniq], dtype=np.int32)
        out_maps[t] = table[inv.reshape(ids.shape)]

    # PrepareTargets: drop instances absent from every frame, keep the first `max_instances`
    k_all = len(segment_ids)
    counts = np.stack([np.bincount(m.ravel(), minlength=k_all + 1)[1:] for m in out_maps], axis=1)  # [K, T]
    present = counts > 0
    keep = np.flatnonzero(present.any(axis=1))[:max_instances]
    relabel = np.zeros(k_all + 1, dtype=np.int16)
    relabel[keep + 1] = np.arange(1, len(keep) + 1, dtype=np.int16)
    maps = relabel[out_maps]
    ids = np.where(present[keep], np.arange(len(keep))[:, None], -1).astype(np.int64)
    return {
        "images": torch.from_numpy(out_images),
        "instance_map": torch.from_numpy(maps),
        "ids": torch.from_numpy(ids),
        "num_instances": int(len(keep)),
    }


def shuffle_order(seed: int, epoch: int, n: int) -> np.ndarray:
    """The image order of one pass over the dataset."""
    g = torch.Generator().manual_seed(int(np.random.SeedSequence([seed, epoch, 7]).generate_state(1)[0]))
    return torch.randperm(n, generator=g).numpy()


def clip_seed(seed: int, position: int, stream: int = 0) -> int:
    """A 63-bit seed for clip `position` of the global stream."""
    return int(np.random.SeedSequence([seed, position, 1000 + stream]).generate_state(2, np.uint64)[0] >> np.uint64(1))


class ClipDataset(torch.utils.data.Dataset):
    """Map-style dataset indexed by the global clip position (an infinite shuffled stream)."""

    def __init__(self, records: list[PanopticRecord], data_cfg, frames: int, size: int, seed: int):
        self.records = records
        self.data = data_cfg
        self.frames = frames
        self.size = size
        self.seed = seed
        self._order: tuple[int, np.ndarray] | None = None

    def __len__(self) -> int:  # nominal; positions are unbounded
        return len(self.records)

    def record_index(self, position: int) -> int:
        n = len(self.records)
        epoch = position // n
        if self._order is None or self._order[0] != epoch:
            self._order = (epoch, shuffle_order(self.seed, epoch, n))
        return int(self._order[1][position % n])

    def __getitem__(self, position: int) -> dict:
        index = self.record_index(position)
        rec = self.records[index]
        rng = np.random.default_rng([self.seed, position])
        aug = ClipAugmentation.draw(rng, self.frames, self.data)
        try:
            image, pan = load_pair(rec)
        except DatasetError as err:
            # handed to the trainer, which raises it: raised here, a loader worker would wrap it
            # in a message holding the worker's traceback
            return {"error": str(err), "position": position, "index": index}
        clip = make_clip(image, pan, rec.segment_ids, aug, self.frames,
                         self.size, self.data.max_instances, self.data.temporal_shift)
        clip["position"] = position
        clip["index"] = index
        return clip


class ClipPositionSampler(torch.utils.data.Sampler):
    """Global clip positions of this rank, from iteration `start_iter` on (infinite).

    Iteration i covers positions [i B, (i+1) B); rank r takes i B + r + j W for j < B / W
    (detectron2's TrainingSampler: every world_size-th element of one shared stream).
    """

    def __init__(self, batch: int, rank: int, world_size: int, start_iter: int = 0):
        if batch % world_size:
            raise ValueError(f"solver.ims_per_batch={batch} is not divisible by the {world_size} processes")
        self.batch, self.rank, self.world, self.start_iter = batch, rank, world_size, start_iter
        self.per_rank = batch // world_size

    def __iter__(self) -> Iterator[int]:
        it = self.start_iter
        while True:
            for j in range(self.per_rank):
                yield it * self.batch + self.rank + j * self.world
            it += 1

    def __len__(self) -> int:  # pragma: no cover - infinite
        return 2**62


def collate_clips(batch: list[dict]) -> list[dict]:
    return batch


def build_loader(dataset: ClipDataset, batch: int, rank: int, world_size: int, start_iter: int,
                 num_workers: int) -> torch.utils.data.DataLoader:
    sampler = ClipPositionSampler(batch, rank, world_size, start_iter)
    return torch.utils.data.DataLoader(
        dataset, batch_size=sampler.per_rank, sampler=sampler, num_workers=num_workers,
        collate_fn=collate_clips, pin_memory=False, persistent_workers=num_workers > 0,
        prefetch_factor=2 if num_workers > 0 else None,
    )


def clip_targets(clip: dict, device: torch.device | str) -> torch.Tensor:
    """Target masks [N, T, S, S] float (1 inside the instance) on `device`."""
    n = clip["num_instances"]
    maps = clip["instance_map"].to(device)
    labels = torch.arange(1, n + 1, device=device, dtype=maps.dtype)
    return (maps.unsqueeze(0) == labels.view(-1, 1, 1, 1)).float()


def normalize_images(images: torch.Tensor) -> torch.Tensor:
    """uint8 [T, 3, S, S] -> ImageNet-normalised float32 (official: /255, -mean, /std)."""
    from ..config import IMAGE_MEAN, IMAGE_STD  # noqa: PLC0415

    x = images.float() / 255.0
    mean = torch.tensor(IMAGE_MEAN, dtype=torch.float32, device=x.device)[:, None, None]
    std = torch.tensor(IMAGE_STD, dtype=torch.float32, device=x.device)[:, None, None]
    return (x - mean) / std


__all__ = [
    "DatasetError", "PanopticRecord", "read_panoptic_dataset", "ClipAugmentation", "make_clip", "ClipDataset",
    "ClipPositionSampler", "build_loader", "clip_targets", "normalize_images", "clip_seed", "shuffle_order",
    "load_rgb",
]
