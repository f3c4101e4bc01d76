"""The online merge (entitysam.inference.online_merge) against a plain restatement of its rule and
against the official offline post-processing; one merge config drives both merges."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import reference_dir
from entitysam.inference.merge_rules import MergeConfig, mean_step_scores
from entitysam.inference.offline_merge import merge_video_panoptic
from entitysam.inference.online_merge import OnlineMerger, RunningScore

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ----------------------------------------------------------------------------- the merge


def naive_online(step_scores, logits, out_size, delay, warmup):
    """The online rule restated on whole volumes, as plainly as possible.

    step_scores: [warmup + n, Q] eIoU per step; logits: [Q, n, h, w]. Frame t is emitted once
    frame min(t + delay, n - 1) has been seen: scores = mean eIoU of the steps seen, quality over
    the every-5th frames seen, kept = score >= max(0.05, min score); the overlap counts are those
    committed by the frames already emitted plus those of the frames seen but not emitted, with
    the current scores; a new survivor gets the next id.
    """
    q, n = logits.shape[:2]
    committed = np.zeros((q, 3), np.int64)  # A, O, S per query
    ids = np.zeros(q, np.int64)
    next_id = 1
    maps = [None] * n
    emitted = 0
    exact = delay + 1 + warmup
    for seen in range(1, n + 1):
        ready = seen - delay if seen < n else n  # frames that can be emitted now
        if ready <= emitted:
            continue
        steps = warmup + seen
        s = step_scores[:steps]
        scores = s.mean(0) if steps <= exact else (s.double().sum(0) / steps).float()
        lowest = scores.min()  # the official k-th best with k = min(Q, 100)
        kept = torch.nonzero(scores >= (lowest if bool(lowest > 0.05) else 0.05)).flatten()
        if kept.numel() == 0:
            for t in range(emitted, ready):
                maps[t] = np.zeros(out_size, np.int32)
            emitted = ready
            continue
        m = logits[kept][:, :seen]
        sub = m[:, ::5]
        quality = (sub > 1).flatten(1).sum(-1) / (sub > -1).flatten(1).sum(-1).clamp(min=1)
        ks = scores[kept] + 0.5 * quality
        prob = F.interpolate(m[:, emitted:seen], size=out_size, mode="bilinear", align_corners=False).sigmoid()
        arg = (ks.view(-1, 1, 1, 1) * prob).argmax(0)
        arg[(prob < 0.5).all(0)] = -1
        counts = np.zeros((len(kept), 3), np.int64)
        frame_counts = []
        for j in range(len(kept)):
            own = prob[j] >= 0.5
            per_frame = [((arg == j).flatten(1).sum(1)), own.flatten(1).sum(1), ((arg == j) & own).flatten(1).sum(1)]
            frame_counts.append(per_frame)
            counts[j] = [int(c.sum()) for c in per_frame]
        total = committed[kept.numpy()] + counts
        seg = np.zeros(len(kept), np.int64)
        for j in range(len(kept)):
            a, o, s_ = total[j]
            if a > 0 and o > 0 and s_ > 0 and a / o >= 0.7:
                if ids[kept[j]] == 0:
                    ids[kept[j]] = next_id
                    next_id += 1
                seg[j] = ids[kept[j]]
        for t in range(emitted, ready):
            i = t - emitted
            pan = np.zeros(out_size, np.int32)
            for j in range(len(kept)):
                if seg[j]:
                    pan[((arg[i] == j) & (prob[j, i] >= 0.5)).numpy()] = seg[j]
                committed[kept[j]] += [int(frame_counts[j][c][i]) for c in range(3)]
            maps[t] = pan
        emitted = ready
    return np.stack(maps), ids


def random_video(seed, q=7, n=13, side=12, warmup=3):
    """Moving blobs with sharp or soft edges, per-step scores that drift (some queries cross the
    0.05 threshold, some survive only later): exercises ids given mid-stream."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(side, dtype=torch.float32), torch.arange(side, dtype=torch.float32),
                            indexing="ij")
    logits = torch.empty(q, n, side, side)
    for k in range(q):
        c = torch.rand(2, generator=g) * side
        v = (torch.rand(2, generator=g) - 0.5) * 1.5
        r = 2 + torch.rand(1, generator=g) * 4
        sharp = 1 + torch.rand(1, generator=g) * 5
        for t in range(n):
            cy, cx = c + v * t
            d = ((yy - cy) ** 2 + (xx - cx) ** 2).sqrt()
            logits[k, t] = sharp * (r - d) + 0.7 * torch.randn(side, side, generator=g)
    base = torch.rand(q, generator=g) * 0.5
    trend = (torch.rand(q, generator=g) - 0.5) * 0.06
    steps = torch.stack([(base + trend * p + 0.05 * torch.rand(q, generator=g)).clamp(0.0, 1.0)
                         for p in range(warmup + n)])
    return steps, logits


def run_merger(steps, logits, out_size, delay, warmup=3, **kw):
    q, n = logits.shape[:2]
    m = OnlineMerger(q, out_size, delay, warmup_steps=warmup, **kw)
    out = []
    for p in range(warmup):
        m.add_scores(steps[p])
    for t in range(n):
        m.add_scores(steps[warmup + t])
        got = m.add_frame(logits[:, t])
        assert [e.t for e in got] == ([t - delay] if t >= delay else [])  # exactly when frame t+delay arrives
        out += got
    out += m.finish()
    return out, m


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("delay", [0, 1, 4, 12])
def test_merger_follows_the_online_rule(seed, delay):
    steps, logits = random_video(seed)
    out, m = run_merger(steps, logits, (20, 24), delay)
    expected, ids = naive_online(steps, logits, (20, 24), delay, 3)
    assert [e.t for e in out] == list(range(logits.shape[1]))
    np.testing.assert_array_equal(np.stack([e.id_map for e in out]), expected)
    np.testing.assert_array_equal(m.ids, ids)
    # ids are 1..m, each owned by one query for the whole stream
    owners = {}
    for e in out:
        for sid, (qi, _) in e.segments.items():
            assert owners.setdefault(sid, qi) == qi and m.ids[qi] == sid
    assert sorted(owners) == list(range(1, len(owners) + 1))


def test_random_videos_exercise_late_ids():
    """The random cases above are not trivial: some ids are given after the first emission and
    some survivors stop surviving for a while."""
    late = flicker = 0
    for seed in range(3):
        steps, logits = random_video(seed)
        out, _ = run_merger(steps, logits, (20, 24), 0)
        first = {}
        alive = [set(e.segments) for e in out]
        for t, ids in enumerate(alive):
            for sid in ids:
                first.setdefault(sid, t)
        late += sum(1 for t in first.values() if t > 0)
        flicker += sum(1 for sid in first for t in range(first[sid], len(out)) if sid not in alive[t])
    assert late > 0 and flicker > 0


@pytest.mark.parametrize("variant", ["golden-vits", "golden-vitl"])
def test_full_lookahead_reproduces_official_postprocessing(variant):
    """With every frame seen before any decision, the online merge is the official one: the
    golden post-processing fixtures (case a: crafted masks, case b: from the golden run)."""
    with np.load(reference_dir() / variant / "postproc.npz") as f:
        p = dict(f)
    with np.load(reference_dir() / variant / "golden.npz") as f:
        g = {k: f[k] for k in ("lowres_logits_sub4", "is_padding", "video_scores", "out_size")}
    b_logits = p["b_logit_scale"] * g["lowres_logits_sub4"][~g["is_padding"]].transpose(1, 0, 2, 3)
    cases = {"a": (p["a_scores"], p["a_logits"], p["a_out_size"]),
             "b": (g["video_scores"], np.ascontiguousarray(b_logits), g["out_size"])}
    for case, (scores, logits, out_size) in cases.items():
        q, n = logits.shape[:2]
        for delay in (n - 1, n + 3):
            m = OnlineMerger(q, out_size, delay, warmup_steps=0)
            m.add_scores(torch.from_numpy(scores))  # one "step" whose eIoU is the video score
            out = []
            for t in range(n):
                out += m.add_frame(torch.from_numpy(logits[:, t]))
            out += m.finish()
            np.testing.assert_array_equal(np.stack([e.id_map for e in out]), p[f"{case}_panoptic_ids"])
            assert sorted(out[0].segments) == p[f"{case}_segment_ids"].tolist()
            assert [out[0].segments[s][0] for s in sorted(out[0].segments)] == p[f"{case}_segment_query_index"].tolist()


def test_merge_config_is_the_official_one_by_default():
    assert MergeConfig() == MergeConfig(overlap_threshold=0.7, mask_binary_threshold=0.5,
                                        object_mask_threshold=0.05, test_topk_per_image=100)


@pytest.mark.parametrize("config", [MergeConfig(overlap_threshold=0.95), MergeConfig(mask_binary_threshold=0.8),
                                    MergeConfig(object_mask_threshold=0.3, test_topk_per_image=4)],
                         ids=["overlap", "binary", "kept"])
def test_one_merge_config_drives_both_merges(config):
    """The same MergeConfig gives the online merge with full look-ahead the offline maps, and it
    does change them (so both merges read it, not a literal of their own)."""
    steps, logits = random_video(0)
    scores = steps.mean(0)
    q, n = logits.shape[:2]
    default = merge_video_panoptic(scores, logits, (20, 24)).id_maps
    offline = merge_video_panoptic(scores, logits, (20, 24), config=config)
    m = OnlineMerger(q, (20, 24), n - 1, warmup_steps=0, config=config)
    m.add_scores(scores)
    out = []
    for t in range(n):
        out += m.add_frame(logits[:, t])
    out += m.finish()
    np.testing.assert_array_equal(np.stack([e.id_map for e in out]), offline.id_maps)
    assert sorted(out[0].segments) == offline.segment_ids
    assert not np.array_equal(offline.id_maps, default)


def test_interrupted_emission_changes_nothing(monkeypatch):
    """A Ctrl-C inside an emission leaves the merger as it was (the frame stays in the window):
    finishing then gives what an uninterrupted run gives (no step arrives in between, so the
    decisions are the same)."""
    from entitysam.inference import online_merge

    steps, logits = random_video(1)
    ref = OnlineMerger(7, (20, 24), 1)
    hit = OnlineMerger(7, (20, 24), 1)
    for m in (ref, hit):
        for p in range(3):
            m.add_scores(steps[p])
    ref_out, hit_out = [], []
    for t in range(7):
        for m, out in ((ref, ref_out), (hit, hit_out)):
            m.add_scores(steps[3 + t])
            if m is hit and t == 6:
                real, calls = online_merge.assign_pixels, []

                def flaky(*args):
                    calls.append(1)
                    if len(calls) == 2:  # in the middle of the window
                        raise KeyboardInterrupt
                    return real(*args)

                monkeypatch.setattr(online_merge, "assign_pixels", flaky)
                before = (hit._win_area.clone(), hit.ids.copy(), hit.next_id, hit.frames_emitted)
                with pytest.raises(KeyboardInterrupt):
                    hit.add_frame(logits[:, t])
                monkeypatch.setattr(online_merge, "assign_pixels", real)
                assert torch.equal(hit._win_area, before[0]) and np.array_equal(hit.ids, before[1])
                assert (hit.next_id, hit.frames_emitted, hit.pending) == (before[2], before[3], 2)
            else:
                out += m.add_frame(logits[:, t])
    ref_out += ref.finish()
    hit_out += hit.finish()
    assert [e.t for e in hit_out] == list(range(7)) and any(e.segments for e in ref_out[5:])
    for a, b in zip(ref_out, hit_out):
        np.testing.assert_array_equal(a.id_map, b.id_map)
        assert a.segments == b.segments


def test_merger_rejects_bad_input():
    with pytest.raises(ValueError, match="delay"):
        OnlineMerger(3, (4, 4), -1)
    m = OnlineMerger(3, (4, 4), 0)
    with pytest.raises(ValueError, match="add_scores"):
        m.add_frame(torch.zeros(3, 2, 2))
    m.add_scores(torch.ones(3))
    with pytest.raises(ValueError, match=r"\[Q=3, h, w\]"):
        m.add_frame(torch.zeros(2, 2, 2))
    assert len(m.add_frame(torch.zeros(3, 2, 2))) == 1
    assert m.finish() == [] and m.finish() == []
    with pytest.raises(RuntimeError, match="finished"):
        m.add_frame(torch.zeros(3, 2, 2))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("exact_steps", [0, 3, 9])
def test_running_score_is_rounded_like_the_offline_mean(dtype, exact_steps):
    """Kept steps or running sum, the mean is rounded to the dtype the steps computed the eIoU in,
    as the offline video score is (mean_step_scores); in float32 it is the float32 mean itself."""
    g = torch.Generator().manual_seed(3)
    steps = [torch.rand(50, generator=g).to(dtype).float() for _ in range(9)]
    running = RunningScore(exact_steps)
    for s in steps:
        running.add(s, dtype)
    mean = running.mean()
    assert mean.dtype == torch.float32
    assert torch.equal(mean.to(dtype).float(), mean)  # a value of the steps' dtype
    offline = mean_step_scores(steps, dtype)
    if exact_steps >= len(steps):
        assert torch.equal(mean, offline)
    else:  # float64 running sum: at most one rounding step of `dtype` from the offline mean
        assert torch.allclose(mean, offline, rtol=0, atol=float(torch.finfo(dtype).eps))
    if dtype != torch.float32:
        assert not torch.equal(offline, torch.stack(steps).mean(0))  # rounding did something
