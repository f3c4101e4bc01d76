"""Named model configurations.

`vit-s` and `vit-l` are the two published EntitySAM models (SAM 2.1 Hiera-S / Hiera-L with
DINOv2 ViT-S/14 / ViT-L/14). The `tiny` configuration runs the same code path at toy sizes so
that tests finish in seconds; it has no published weights.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

# Pixel normalisation of the input frames (ImageNet mean / std of RGB in [0, 1]), as the
# official loader applies it; the checkpoints expect it.
IMAGE_MEAN = (0.485, 0.456, 0.406)
IMAGE_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class HieraConfig:
    """Hiera trunk + FPN neck (SAM 2.1 image encoder). Each stage doubles the channels and heads
    of the one before (`entitysam.modeling.hiera.Hiera` applies that rule; it is written only there)."""

    embed_dim: int = 96
    num_heads: int = 1
    stages: tuple[int, ...] = (1, 2, 11, 2)
    global_att_blocks: tuple[int, ...] = (7, 10, 13)
    window_spec: tuple[int, ...] = (8, 4, 14, 7)
    window_pos_embed_bkg_spatial_size: tuple[int, int] = (7, 7)
    q_pool: int = 3
    mlp_ratio: float = 4.0


@dataclass(frozen=True)
class DinoConfig:
    """DINOv2 ViT used as the semantic encoder (hub model without registers)."""

    embed_dim: int = 384
    depth: int = 12
    num_heads: int = 6
    patch_size: int = 14
    pretrain_grid: int = 37  # 518 / 14: the size its position embeddings were trained for
    mlp_ratio: float = 4.0
    interpolate_offset: float = 0.1


@dataclass(frozen=True)
class EntitySAMConfig:
    """Everything needed to build an EntitySAM model.

    `image_size // backbone_stride` is the side of the token grid (64 for the published
    models); DINOv2 sees the image at `grid * dino.patch_size` so its patch grid matches.
    """

    name: str = "vit-s"
    image_size: int = 1024
    backbone_stride: int = 16
    hidden_dim: int = 256  # SAM feature width (FPN d_model, prompt and decoder width)
    mem_dim: int = 64  # memory encoder output width
    num_queries: int = 50
    num_maskmem: int = 7
    decoder_depth: int = 4
    decoder_heads: int = 8
    decoder_mlp_dim: int = 2048
    memory_attention_layers: int = 4
    memory_attention_ffn_dim: int = 2048
    fuser_layers: int = 2
    offset_heads: int = 8  # heads of the point sampler and of the offset attention
    sigmoid_scale_for_mem_enc: float = 20.0
    sigmoid_bias_for_mem_enc: float = -10.0
    fill_hole_area: int = 8
    num_warmup_copies: int = 3  # extra passes over frame 0 before the first output frame
    hiera: HieraConfig = field(default_factory=HieraConfig)
    dino: DinoConfig = field(default_factory=DinoConfig)

    @property
    def grid_size(self) -> int:
        return self.image_size // self.backbone_stride

    @property
    def dino_input_size(self) -> int:
        return self.grid_size * self.dino.patch_size

    @property
    def lowres_mask_size(self) -> int:
        return self.grid_size * 4

    def replace(self, **changes) -> "EntitySAMConfig":
        return dataclasses.replace(self, **changes)


VIT_S = EntitySAMConfig(
    name="vit-s",
    decoder_depth=4,
    hiera=HieraConfig(),
    dino=DinoConfig(embed_dim=384, depth=12, num_heads=6),
)

VIT_L = EntitySAMConfig(
    name="vit-l",
    decoder_depth=8,
    hiera=HieraConfig(
        embed_dim=144,
        num_heads=2,
        stages=(2, 6, 36, 4),
        global_att_blocks=(23, 33, 43),
        window_spec=(8, 4, 16, 8),
    ),
    dino=DinoConfig(embed_dim=1024, depth=24, num_heads=16),
)

# Same architecture and code path, toy sizes: a 128-pixel image gives an 8x8 token grid.
TINY = EntitySAMConfig(
    name="tiny",
    image_size=128,
    hidden_dim=32,
    mem_dim=16,
    num_queries=6,
    decoder_depth=2,
    decoder_heads=4,
    decoder_mlp_dim=64,
    memory_attention_layers=2,
    memory_attention_ffn_dim=64,
    fuser_layers=1,
    offset_heads=4,
    hiera=HieraConfig(
        embed_dim=8,
        num_heads=1,
        stages=(1, 1, 2, 1),
        global_att_blocks=(3,),
        window_spec=(4, 2, 2, 1),
        window_pos_embed_bkg_spatial_size=(4, 4),
    ),
    dino=DinoConfig(embed_dim=24, depth=2, num_heads=2, pretrain_grid=5),
)

# The shipped demo model (trained here from scratch on synthetic scenes, docs/demo-model.md):
# the same modules as vit-s at sizes a 2-core CPU trains in hours and runs at several frames/s.
# 256-pixel input -> 16x16 token grid, 64x64 low-res masks; DINOv2 sees 224 px (16 patches of 14).
DEMO = EntitySAMConfig(
    name="demo",
    image_size=256,
    hidden_dim=64,
    mem_dim=16,
    num_queries=20,
    decoder_depth=2,
    decoder_heads=4,
    decoder_mlp_dim=256,
    memory_attention_layers=2,
    memory_attention_ffn_dim=256,
    fuser_layers=1,
    offset_heads=4,
    hiera=HieraConfig(
        embed_dim=24,
        num_heads=1,
        stages=(1, 2, 3, 1),
        global_att_blocks=(5,),
        window_spec=(8, 8, 8, 8),
        window_pos_embed_bkg_spatial_size=(8, 8),
    ),
    dino=DinoConfig(embed_dim=96, depth=4, num_heads=4, pretrain_grid=16),
)

CONFIGS: dict[str, EntitySAMConfig] = {c.name: c for c in (VIT_S, VIT_L, TINY, DEMO)}


def get_config(name: str) -> EntitySAMConfig:
    """Return a named configuration (`vit-s`, `vit-l`, `tiny`, `demo`)."""
    try:
        return CONFIGS[name]
    except KeyError:
        raise KeyError(f"unknown model config {name!r}; known: {', '.join(CONFIGS)}") from None
