"""Benchmark: entitysam.eval.metrics (VEQ + STQ) vs a straightforward re-reading implementation.

The baseline below follows the official scripts' algorithm step by step
(``eval/metric/eval_veq.py``: every window of every length re-reads its PNGs, builds
the segment dicts from the JSON, stacks the frames and runs np.unique on the
combined ids, then matches with Python dicts; ``eval_stq_vspw_clsag.py``: per frame,
one full-image mask per listed id to build the semantic/instance maps, then
DeepLab2's numpy STQuality update).  It is single-process, as the official scripts are.
It is also imported by tests/test_metrics.py as an independent reference.

    python benchmarks/metrics.py                      # 20 videos x 30 frames at 640x360
    python benchmarks/metrics.py --videos 4 --frames 10 --width 320 --height 180
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

NFRAMES = (1, 2, 4, 6, 8)


# ============================================================================ baseline VEQ


def _read_rgb_ids(path) -> np.ndarray:
    a = np.uint32(np.array(Image.open(path)))
    return a[:, :, 0] + a[:, :, 1] * 256 + a[:, :, 2] * 256 * 256


def _video_lists(pred_dir, gt_dir, gt_json):
    pred_dir, gt_dir = Path(pred_dir), Path(gt_dir)
    gt_doc = json.loads(Path(gt_json).read_text())
    pred_doc = json.loads((pred_dir / "pred.json").read_text())
    gt_by = {a["video_id"]: a["annotations"] for a in gt_doc["annotations"]}
    pred_by = {a["video_id"]: a["annotations"] for a in pred_doc["annotations"]}
    out = []
    for video in gt_doc["videos"]:
        vid = video["video_id"]
        g, p = gt_by[vid], pred_by[vid]
        assert len(g) == len(p)
        names = [im["file_name"] for im in video["images"]]
        out.append(
            (
                vid,
                [
                    (gj, pj, gt_dir / vid / n, pred_dir / "pan_pred" / vid / n)
                    for gj, pj, n in zip(g, p, names)
                ],
            )
        )
    return out


def _window_stats(window):
    """One window of the official VEQ: returns (iou list in official order, tp, fp, fn)."""
    offset = 256 * 256 * 256
    gts, preds, vid_gt, vid_pred = [], [], {}, {}
    for gt_json, pred_json, gt_path, pred_path in window:
        gt = _read_rgb_ids(gt_path)
        pred = _read_rgb_ids(pred_path)
        assert gt.shape == pred.shape
        g_seg: dict = {}
        for el in gt_json["segments_info"]:
            if el["id"] in g_seg:
                g_seg[el["id"]]["area"] += el["area"]
            else:
                g_seg[el["id"]] = dict(el)
        p_seg: dict = {}
        for el in pred_json["segments_info"]:
            if el["id"] in p_seg:
                p_seg[el["id"]]["area"] += el["area"]
            else:
                p_seg[el["id"]] = dict(el)
        unseen = set(p_seg)
        for label, cnt in zip(*np.unique(pred, return_counts=True)):
            if label not in p_seg:
                if label == 0:
                    continue
                raise KeyError(f"id {label} in PNG but not in JSON")
            if "area" in p_seg[label]:
                assert p_seg[label]["area"] == cnt
            p_seg[label]["area"] = cnt
            unseen.discard(label)
        if unseen:
            raise KeyError(f"ids {sorted(unseen)} in JSON but not in PNG")
        gts.append(gt)
        preds.append(pred)
        for k, v in g_seg.items():
            if k in vid_gt:
                vid_gt[k]["area"] += v["area"]
            else:
                vid_gt[k] = v
        for k, v in p_seg.items():
            if k in vid_pred:
                vid_pred[k]["area"] += v["area"]
            else:
                vid_pred[k] = v
    combined = np.stack(gts).astype(np.uint64) * offset + np.stack(preds).astype(np.uint64)
    pairs = {}
    for key, inter in zip(*np.unique(combined, return_counts=True)):
        pairs[(int(key // offset), int(key % offset))] = inter
    ious, tp, gt_hit, pred_hit = [], 0, set(), set()
    for (g, p), inter in pairs.items():
        if g not in vid_gt or p not in vid_pred or vid_gt[g]["iscrowd"] == 1:
            continue
        union = vid_pred[p]["area"] + vid_gt[g]["area"] - inter
        union = union - pairs.get((0, p), 0)
        iou = inter / union
        assert iou <= 1.0
        if iou > 0.5:
            ious.append(iou)
            tp += 1
            gt_hit.add(g)
            pred_hit.add(p)
    fn, crowd = 0, set()
    for g, info in vid_gt.items():
        if g in gt_hit:
            continue
        if info["iscrowd"] == 1:
            crowd.add(g)
            continue
        fn += 1
    fp = 0
    for p, info in vid_pred.items():
        if p in pred_hit:
            continue
        on_ignored = pairs.get((0, p), 0) + sum(pairs.get((c, p), 0) for c in crowd)
        if on_ignored / info["area"] > 0.5:
            continue
        fp += 1
    return ious, tp, fp, fn


def baseline_veq(pred_dir, gt_dir, gt_json):
    videos = _video_lists(pred_dir, gt_dir, gt_json)
    windows, vpq, vsq, vrq = {}, [], [], []
    for n in NFRAMES:
        iou, tp, fp, fn = 0.0, 0, 0, 0
        for _, frames in videos:
            v_iou = 0.0
            for start in range(0, len(frames) - n + 1):
                ious, t, f, m = _window_stats(frames[start : start + n])
                for x in ious:
                    v_iou += x
                tp, fp, fn = tp + t, fp + f, fn + m
            iou += v_iou
        if tp + fp + fn == 0:
            pq = sq = rq = 0.0
        else:
            pq = iou / (tp + 0.5 * fp + 0.5 * fn)
            sq = iou / tp if tp else 0
            rq = tp / (tp + 0.5 * fp + 0.5 * fn)
        windows[(n - 1) * 5] = {"nframes": n, "vpq": 100 * pq, "sq": 100 * sq, "rq": 100 * rq,
                                "iou_sum": iou, "tp": tp, "fp": fp, "fn": fn}
        vpq.append(100 * pq)
        vsq.append(100 * sq)
        vrq.append(100 * rq)

    def mean(xs):
        acc = 0
        for x in xs:
            acc += x
        return acc / len(xs)

    return {"windows": windows, "final": {"vpq": mean(vpq), "sq": mean(vsq), "rq": mean(vrq)}}


# ============================================================================ baseline STQ


class _STQ:
    """DeepLab2 numpy STQuality restricted to what the class-agnostic script uses."""

    def __init__(self, num_classes=2, ignore=255, shift=16, offset=2**24):
        self.n, self.ignore, self.shift, self.mask, self.offset = num_classes, ignore, shift, (1 << shift) - 1, offset
        self.conf, self.preds, self.gts, self.inters, self.length = (collections.OrderedDict() for _ in range(5))

    @staticmethod
    def _count(d, arr):
        for k, c in zip(*np.unique(arr, return_counts=True)):
            d[k] = d[k] + c if k in d else c

    def update(self, y_true, y_pred, seq):
        y_true, y_pred = y_true.astype(np.int64), y_pred.astype(np.int64)
        st, sp = y_true >> self.shift, y_pred >> self.shift
        st = np.where(st != self.ignore, st, self.n)
        sp = np.where(sp != self.ignore, sp, self.n)
        if seq in self.conf:
            idx, cnt = np.unique((st.reshape(-1) << self.shift) + sp.reshape(-1), return_counts=True)
            self.conf[seq][idx >> self.shift, idx & self.mask] += cnt
            self.length[seq] += 1
        else:  # first frame of a sequence: np.add.at, like DeepLab2
            self.conf[seq] = np.zeros((self.n + 1, self.n + 1), np.int64)
            np.add.at(self.conf[seq], (st.reshape(-1), sp.reshape(-1)), 1)
            self.preds[seq], self.gts[seq], self.inters[seq], self.length[seq] = {}, {}, {}, 1
        lm, pm = st == 1, sp == 1
        crowd = lm & ((y_true & self.mask) == 0)
        lm &= ~crowd
        pm &= ~crowd
        self._count(self.preds[seq], y_pred[pm])
        self._count(self.gts[seq], y_true[lm])
        both = lm & pm
        self._count(self.inters[seq], y_true[both] * self.offset + y_pred[both])

    def result(self):
        aq, tubes, ious_seq = [], [], []
        for seq in self.gts:
            outer = 0.0
            for g, gs in self.gts[seq].items():
                inner = 0.0
                for p, ps in self.preds[seq].items():
                    key = self.offset * g + p
                    if key in self.inters[seq]:
                        tpa = self.inters[seq][key]
                        inner += tpa * (tpa / (tpa + (ps - tpa) + (gs - tpa)))
                outer += 1.0 / gs * inner
            aq.append(outer)
            tubes.append(len(self.gts[seq]))
        aq_mean = np.sum(aq) / np.maximum(np.sum(tubes), 1e-15)
        aq_seq = aq / np.maximum(tubes, 1e-15)

        def miou(c):
            i = c.diagonal()
            u = i + (c.sum(0) - i) + (c.sum(1) - i)
            with np.errstate(divide="ignore", invalid="ignore"):
                return np.sum(i.astype(np.double) / np.maximum(u, 1e-15).astype(np.double)) / np.count_nonzero(u)

        total = np.zeros((self.n + 1, self.n + 1), np.int64)
        for c in self.conf.values():
            c[self.n, :] = 0
            total += c
            ious_seq.append(miou(c))
        iou_mean = miou(total)
        return {
            "STQ": float(np.sqrt(aq_mean * iou_mean)),
            "AQ": float(aq_mean),
            "IoU": float(iou_mean),
            "STQ_per_seq": [float(x) for x in np.sqrt(aq_seq * np.asarray(ious_seq))],
            "AQ_per_seq": [float(x) for x in aq_seq],
            "IoU_per_seq": [float(x) for x in ious_seq],
            "ID_per_seq": list(self.gts),
            "Length_per_seq": list(self.length.values()),
        }


def baseline_stq(pred_dir, gt_dir, gt_json):
    metric = _STQ()
    for seq, (_, frames) in enumerate(_video_lists(pred_dir, gt_dir, gt_json)):
        gt_ins, pred_ins = {}, {}
        for gj, pj, _, _ in frames:
            for el in gj["segments_info"]:
                gt_ins.setdefault(el["id"], len(gt_ins))
            for el in pj["segments_info"]:
                pred_ins.setdefault(el["id"], len(pred_ins))
        for gj, pj, gp, pp in frames:
            encoded = []
            for ids, js, ins in ((_read_rgb_ids(gp), gj, gt_ins), (_read_rgb_ids(pp), pj, pred_ins)):
                sem = np.ones_like(ids) * 255
                inst = np.ones_like(ids) * 255
                for el in js["segments_info"]:
                    m = ids == el["id"]
                    sem[m] = 1
                    inst[m] = ins[el["id"]]
                encoded.append(((sem << 16) + inst).astype(np.int32))
            metric.update(encoded[0], encoded[1], seq)
    return metric.result()


# ============================================================================ benchmark


def _compare(a, b, path="") -> list[str]:
    """Differences between two nested results (exact for ints, 1e-9 relative for floats)."""
    diffs = []
    if isinstance(a, dict):
        for k in b:
            if k not in a:
                diffs.append(f"{path}/{k}: missing")
            else:
                diffs += _compare(a[k], b[k], f"{path}/{k}")
    elif isinstance(a, (list, tuple)):
        if len(a) != len(b):
            diffs.append(f"{path}: length {len(a)} != {len(b)}")
        for i, (x, y) in enumerate(zip(a, b)):
            diffs += _compare(x, y, f"{path}[{i}]")
    elif isinstance(a, float) or isinstance(b, float):
        if not (a == b or abs(a - b) <= 1e-9 * max(1.0, abs(b)) or (a != a and b != b)):
            diffs.append(f"{path}: {a!r} != {b!r}")
    elif a != b:
        diffs.append(f"{path}: {a!r} != {b!r}")
    return diffs


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--videos", type=int, default=20)
    ap.add_argument("--frames", type=int, default=30)
    ap.add_argument("--width", type=int, default=640)
    ap.add_argument("--height", type=int, default=360)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=None, help="processes for entitysam (default: all CPUs)")
    ap.add_argument("--root", default=None, help="dataset directory (default: a temporary directory)")
    args = ap.parse_args(argv)

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    from entitysam.eval.metrics import evaluate, format_table
    from entitysam.data.synthetic.vipseg import make_synthetic_dataset

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.root) if args.root else Path(tmp)
        t0 = time.perf_counter()
        ds = make_synthetic_dataset(root, num_videos=args.videos, num_frames=args.frames, width=args.width,
                                    height=args.height, seed=args.seed)
        t_gen = time.perf_counter() - t0
        print(f"dataset: {args.videos} videos x {args.frames} frames at {args.width}x{args.height} "
              f"(generated in {t_gen:.1f} s) under {root}")
        workers = args.workers or os.cpu_count() or 1

        t0 = time.perf_counter()
        ours = evaluate(ds.pred_dir, ds.gt_dir, ds.gt_json, workers=workers)
        t_ours = time.perf_counter() - t0
        t0 = time.perf_counter()
        ours1 = evaluate(ds.pred_dir, ds.gt_dir, ds.gt_json, workers=1)
        t_ours1 = time.perf_counter() - t0

        t0 = time.perf_counter()
        base_veq = baseline_veq(ds.pred_dir, ds.gt_dir, ds.gt_json)
        t_bveq = time.perf_counter() - t0
        t0 = time.perf_counter()
        base_stq = baseline_stq(ds.pred_dir, ds.gt_dir, ds.gt_json)
        t_bstq = time.perf_counter() - t0

    diffs = _compare(ours["veq"], base_veq, "veq") + _compare(ours["stq"], base_stq, "stq")
    diffs += _compare(ours1, ours, "workers=1 vs workers=N")
    print(format_table(ours))
    print()
    t_base = t_bveq + t_bstq
    rows = [
        ("baseline (official algorithm, 1 process): VEQ", t_bveq, None),
        ("baseline (official algorithm, 1 process): STQ", t_bstq, None),
        ("baseline total", t_base, 1.0),
        ("entitysam evaluate, 1 process", t_ours1, t_base / t_ours1),
        (f"entitysam evaluate, {workers} processes", t_ours, t_base / t_ours),
    ]
    print(f"{'implementation':<50} {'time [s]':>9} {'speed-up':>9}")
    print("-" * 70)
    for name, t, s in rows:
        print(f"{name:<50} {t:9.2f} {'' if s is None else f'{s:8.1f}x':>9}")
    print()
    if diffs:
        print("RESULTS DIFFER:")
        print("\n".join(diffs[:20]))
        return 1
    print("results identical (VEQ all windows + final, STQ/AQ/IoU + per sequence; workers=1 == workers=N)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
