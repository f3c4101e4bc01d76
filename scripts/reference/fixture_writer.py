"""Writing a golden fixture from a complete official run (`harness.py write-fixture`), and the
synthetic frames a new fixture starts from (`harness.py make-frames`). Layout: shared/reference/README.md."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

import machine
import official
from runs import load_run


def crafted_postproc_inputs(seed: int = 0) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
    """Post-processing inputs with known answers: 10 queries x 7 frames of 48x64 logits, moving
    ellipses of varying sharpness plus noise; query 3 duplicates query 1 (+0.3 logits, score -0.01),
    query 5 scores below the 0.05 cut, query 7 is empty."""
    rng = np.random.default_rng(seed)
    q, t, h, w = 10, 7, 48, 64
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    logits = np.empty((q, t, h, w), dtype=np.float32)
    for i in range(q):
        cy, cx = rng.uniform(10, h - 10), rng.uniform(10, w - 10)
        ry, rx = rng.uniform(5, 14), rng.uniform(6, 18)
        vy, vx = rng.uniform(-1.5, 1.5, 2)
        sharp = rng.uniform(2, 12)
        for f in range(t):
            r = ((yy - cy - vy * f) / ry) ** 2 + ((xx - cx - vx * f) / rx) ** 2
            logits[i, f] = sharp * (1 - r) + rng.normal(0, 0.5, (h, w))
    logits[3] = logits[1] + 0.3
    logits[7] = -10.0
    scores = rng.uniform(0.2, 0.9, q).astype(np.float32)
    scores[3] = scores[1] - 0.01
    scores[5] = 0.03
    return scores, logits, (90, 160)


def cmd_write_fixture(args) -> None:
    import shutil

    import torch
    import torch.nn.functional as F

    run, info = load_run(Path(args.run))
    if info.get("who") != "official" or "panoptic_ids" not in run:
        raise SystemExit("error: a fixture is written from a complete official run (harness.py official, no --steps)")
    frames, out = Path(args.frames), Path(args.out)
    names = official.frame_names(frames)
    (out / "frames").mkdir(parents=True, exist_ok=True)
    for name in names:
        shutil.copyfile(frames / name, out / "frames" / name)
    logits, pad = run["logits"], run["is_padding"]
    height, width = (int(v) for v in run["out_size"])
    video_bits = []
    for p in np.flatnonzero(~pad):
        up = F.interpolate(torch.from_numpy(logits[p][:, None]), size=(height, width), mode="bilinear",
                           align_corners=False)[:, 0] > 0
        video_bits.append(np.packbits(up.numpy(), axis=-1))
    np.savez_compressed(
        out / "golden.npz", is_padding=pad, source_frame=run["source_frame"].astype(np.int32),
        lowres_logits_sub4=np.ascontiguousarray(logits[:, :, ::4, ::4]),
        lowres_sign_bits=np.packbits(logits > 0, axis=-1), video_sign_bits=np.stack(video_bits),
        pred_eiou=run["eiou"], video_scores=run["video_scores"], sampled_point_coords=run["points"],
        panoptic_ids=run["panoptic_ids"], segment_ids=run["segment_ids"],
        segment_query_index=run["segment_query_index"], out_size=run["out_size"].astype(np.int32))

    a_scores, a_logits, a_size = crafted_postproc_inputs()
    a = official.postprocess(a_scores, a_logits, a_size)
    scale = np.float32(6.0)
    b_logits = np.ascontiguousarray(scale * logits[~pad][:, :, ::4, ::4].transpose(1, 0, 2, 3))
    b = official.postprocess(run["video_scores"], b_logits, (height, width))
    np.savez_compressed(
        out / "postproc.npz", a_scores=a_scores, a_logits=a_logits, a_out_size=np.array(a_size, dtype=np.int32),
        a_panoptic_ids=a["panoptic_ids"], a_segment_ids=a["segment_ids"], a_segment_query_index=a["segment_query_index"],
        b_panoptic_ids=b["panoptic_ids"], b_segment_ids=b["segment_ids"], b_segment_query_index=b["segment_query_index"],
        b_logit_scale=scale)

    model_cfg, depth = official.VARIANTS[info["variant"]]
    meta = {
        "variant": info["variant"], "weight_seed": info["seed"], "post_seed": 0, "dtype": "float32",
        "model_cfg": model_cfg, "mask_decoder_depth": depth,
        "fill_holes": "cpu connected components (GPU-equivalent)", "num_frames": len(names),
        "frame_names": names, "out_size": [height, width], "num_queries": int(logits.shape[1]),
        "torch_version": info["machine"]["torch"]["version"], "threads": info["machine"]["threads"],
        "cpu": info["machine"]["cpu"]["model_name"], "machine": info["machine"],
        "official_commit": "cdbf6af7231c7b60670d3f456edcea234ff46ac8",
        "dinov2_commit": "b8931f7bf91576930313be2c6d6af376033b35f0",
        "step_times_s": [round(float(t), 2) for t in run["step_times_s"]],
        "num_segments": int(len(run["segment_ids"])),
        "made_by": "scripts/reference/harness.py write-fixture (patches: scripts/reference/official.py)",
        "deviations": [
            "CPU fp32 instead of CUDA + torch.autocast(bfloat16) + TF32 of the eval script",
            "maskmem_features rounded to bfloat16 (official), cast back to float32 on entry to memory_attention",
            "ALLOW_ALL_KERNELS=True: default CPU SDPA kernel instead of the math kernel the CUDA flags force",
            "hole filling via scipy.ndimage.label (8-connectivity) for sam2._C.get_connected_componnets",
            "stub modules: detectron2.structures, panopticapi.utils, torchvision, train (train.utils.comm real); "
            "DINOv2 via torch.hub.load(local dir, pretrained=False)",
        ],
    }
    if args.cross_cpu:
        meta["cross_cpu"] = json.loads(Path(args.cross_cpu).read_text())
    (out / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
    print(f"wrote {out}: {len(names)} frames {width}x{height}, {len(logits)} steps, {meta['num_segments']} segments, "
          f"made on {machine.cpu_family_name(info['machine']['cpu'])}")


def cmd_make_frames(args) -> None:
    """Deterministic input frames: entitysam's synthetic demo scene, saved as JPEG (quality 95)."""
    from PIL import Image

    from entitysam.data.synthetic.scenes import render_demo_scene

    width, height = (int(v) for v in args.size.lower().split("x"))
    images, _ = render_demo_scene(np.random.default_rng(args.seed), args.num_frames, height, width)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for i, image in enumerate(images):
        Image.fromarray(image).save(out / f"{i:05d}.jpg", quality=95)
    print(f"wrote {len(images)} frames {width}x{height} (seed {args.seed}) to {out}")
