"""Deterministic synthetic data: every file is a function of a seed.

    label_video.py  random VIPSeg-like label videos (GT ids, predictions with the usual errors)
    vipseg.py       VIPSeg-layout datasets from them: GT + predictions (metrics), frames + GT (eval runner)
    scenes.py       textured demo scenes (stuff, things of five shapes that drift and occlude)
    demo.py         the demo video: one demo scene as a VIPSeg-layout video with its ground truth
    coco.py         COCO-panoptic training images (basic shapes, or frames of demo scenes);
                    ``python -m entitysam.data.synthetic.coco DIR`` writes one
"""
