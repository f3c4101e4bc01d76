"""Inference: frames -> model steps -> per-video merge (preprocess, precision policy, the tracker with
its memory bank, hole filling, the shared merge rules, the offline and online merges)."""
