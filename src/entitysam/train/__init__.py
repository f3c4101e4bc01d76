"""Training: the official two-stage COCO recipe, class-agnostic, on PyTorch DDP.

Entry points: `entitysam.train.trainer.train(cfg)`, the CLI (`python -m entitysam.train`,
`entitysam train`), configs in `entitysam.train.config`. See docs/training.md.
"""
