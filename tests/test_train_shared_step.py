"""Training runs the model's own step (issue 20, item 4): `train.forward.clip_forward` goes through
`EntitySAM.encode_frame` / `EntitySAM.step` and reads memories with `recall_memories`, the rule
inference uses. The training forward it replaced is kept below, in this file only, to prove
that losses, outputs and gradients are the same bit for bit."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from entitysam.config import get_config
from entitysam.modeling.entitysam import MEMORY_DTYPE, EntitySAM, FrameFeatures, recall_memories
from entitysam.modeling.prompt import fused_linear, offset_attention, sample_points
from entitysam.train.criterion import Criterion, CriterionConfig, HungarianMatcher
from entitysam.train.forward import clip_forward
from entitysam.train.setup import set_trainable
from entitysam.inference.tracker import MemoryBank

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ------------------------------------------------------------------ the pre-refactor training forward
def _needs_grad(module):
    return torch.is_grad_enabled() and any(p.requires_grad for p in module.parameters())


def _old_encode_frame(model, image):
    with torch.set_grad_enabled(_needs_grad(model.image_encoder)):
        features, pos = model.image_encoder(image)
    s4 = model.sam_mask_decoder.conv_s0(features[0])
    s8 = model.sam_mask_decoder.conv_s1(features[1])
    dino_in = F.interpolate(image, size=(model.cfg.dino_input_size,) * 2, mode="bilinear", align_corners=False)
    with torch.set_grad_enabled(_needs_grad(model.dinov2_feature_extractor)):
        tokens = model.dinov2_feature_extractor(dino_in)
    return FrameFeatures(features[2], pos[2], (s4, s8), model.dinov2_projector(tokens))


def _old_step(model, frame, memories, prev_points, memory_grad):
    cfg = model.cfg
    q, g = cfg.num_queries, cfg.grid_size
    with torch.set_grad_enabled(memory_grad and torch.is_grad_enabled()):
        feats = model.condition_on_memory(frame, memories)
    attended = offset_attention(model.offset_attention, model.offset_embedding.weight, feats, frame.semantic)
    if prev_points is None:
        points = sample_points(feats[0], (g, g), model.point_sampler_net, model.point_sampler_num, cfg.image_size)
    else:
        points = prev_points.detach() + model.offset_fc(attended)
    class_logits = model.offset_cls(attended)
    image = fused_linear(model.backbone_feature_enhancement, feats, frame.semantic).transpose(1, 2)
    image = (image.unflatten(-1, (g, g)) + model.sam_prompt_encoder.dense_embedding()).expand(q, -1, -1, -1)
    sparse = model.sam_prompt_encoder.embed_positive_points(points)
    masks, iou = model.sam_mask_decoder(image, model.sam_prompt_encoder.dense_pe(), sparse, frame.high_res)
    return masks.float(), iou[:, 0], class_logits, points


def _old_clip_forward(model, images, memory_grad=False):
    """`train/forward.py` of commit 27ea16c: its own copy of the step and of the memory window."""
    num_frames, capacity = images.shape[0], model.cfg.num_maskmem
    bank, points, masks_all, iou_all, cls_all, pts_all = [], None, [], [], [], []
    for t in range(num_frames):
        frame = _old_encode_frame(model, images[t:t + 1])
        memories = [(mem, t - s) for s, mem in bank if 1 <= t - s <= capacity]
        masks, iou, cls, points = _old_step(model, frame, memories, points, memory_grad)
        masks_all.append(masks[:, 0])
        iou_all.append(iou)
        cls_all.append(cls)
        pts_all.append(points.detach())
        if t + 1 < num_frames:
            with torch.no_grad():
                memory = model.encode_memory(frame, masks)
            bank = (bank + [(t, memory.to(torch.bfloat16))])[-capacity:]
    return {"pred_logits": torch.stack(cls_all).mean(0), "pred_iou": torch.stack(iou_all, dim=1),
            "pred_masks": torch.stack(masks_all, dim=1), "points": torch.stack(pts_all)}


# ------------------------------------------------------------------ one training forward + backward
def _train_once(forward, trainable: str, memory_grad: bool, frames: int, num_maskmem: int):
    """Losses, clip outputs and parameter gradients of one training forward on the tiny model."""
    torch.manual_seed(0)
    model = EntitySAM(dataclasses.replace(get_config("tiny"), num_maskmem=num_maskmem))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("queries.weight", "offset_embedding.weight")):
                p.normal_()
    set_trainable(model, trainable)
    model.train()  # memory-attention dropout active: the RNG draws must line up too
    torch.manual_seed(3)
    images = torch.randn(frames, 3, 128, 128)
    target = torch.zeros(2, frames, 128, 128)
    target[0, :, :64] = 1
    target[1, :, 64:, 64:] = 1
    crit = Criterion(HungarianMatcher(num_points=64), CriterionConfig(num_points=64))
    out = forward(model, images, memory_grad=memory_grad)
    losses, _ = crit(out, target, num_masks=2.0 * frames)
    sum(losses.values()).backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    return {k: v.detach() for k, v in losses.items()}, {k: v.detach() for k, v in out.items()}, grads


# Losses of the pre-refactor forward, measured on an AMD EPYC (1 torch thread, torch 2.13 CPU).
BEFORE = {
    ("official", False, 4, 2): {"loss_ce": 5.946880340576172, "loss_mask": 3.472146987915039,
                                "loss_dice": 2.926776647567749, "loss_iou": 0.09119179099798203},
    ("all", True, 3, 7): {"loss_ce": 5.9098663330078125, "loss_mask": 3.4723567962646484,
                          "loss_dice": 2.7848968505859375, "loss_iou": 0.08939068764448166},
}


@pytest.mark.parametrize("case", list(BEFORE), ids=["official-4frames-2memories", "all-memory_grad-3frames"])
def test_training_forward_on_the_shared_step_is_bit_identical(case):
    """The official recipe over a clip longer than the memory window (frame 3 no longer reads
    frame 0), and the demo recipe (everything trainable, gradients through memory conditioning)."""
    new = _train_once(clip_forward, *case)
    old = _train_once(_old_clip_forward, *case)
    for part_new, part_old in zip(new, old):
        assert part_new.keys() == part_old.keys()
        for key in part_new:
            assert torch.equal(part_new[key], part_old[key]), key
    # and the numbers measured before the change (to rounding: another CPU may round otherwise)
    for key, value in BEFORE[case].items():
        assert new[0][key].item() == pytest.approx(value, rel=1e-5), key


# ------------------------------------------------------------------ which memories a step reads
def test_recall_memories_reads_the_last_capacity_steps_oldest_first():
    stored = [(s, torch.full((1,), float(s))) for s in range(6)]
    recalled = recall_memories(stored, 6, capacity=3)
    assert [r for _, r in recalled] == [3, 2, 1]  # steps back -> maskmem_tpos_enc[r - 1]
    assert [m.item() for m, _ in recalled] == [3.0, 4.0, 5.0]
    assert [r for _, r in recall_memories(stored, 2, capacity=3)] == [2, 1]
    assert recall_memories(stored, 0, capacity=3) == []  # nothing before the first step
    assert [r for _, r in recall_memories(stored, 4, capacity=7)] == [4, 3, 2, 1]  # later entries skipped


def test_recall_memories_is_the_rule_of_the_inference_bank():
    """Inference (`MemoryBank`, bounded to num_maskmem) and training recall the same memories."""
    capacity = 3
    bank, stored = MemoryBank(capacity), []
    for step in range(9):
        from_bank = bank.recall(step)
        from_rule = recall_memories(stored, step, capacity)
        assert [r for _, r in from_bank] == [r for _, r in from_rule]
        assert all(torch.equal(a, b) for (a, _), (b, _) in zip(from_bank, from_rule))
        memory = torch.full((1, 2), float(step))
        bank.add(step, memory)
        stored = (stored + [(step, memory.to(MEMORY_DTYPE))])[-capacity:]
    assert bank.dtype == MEMORY_DTYPE
