"""EntitySAM: segment and track every entity in a video, with no prompts and no labels.

    from entitysam import EntitySAM

    model = EntitySAM.from_pretrained("vit-s")            # or EntitySAM.from_checkpoint(path)
    with model.segment("clip.mp4", stride=2) as result:   # any video, frame folder or image
        for entity in result.entities:
            print(entity.id, entity.score, entity.first_frame, entity.last_frame)
        for frame, id_map in result.items():              # [H, W] int32, 0 = no entity
            ...
        result.save("out/clip", formats=("panoptic", "entities", "overlay"))

    with model.stream("rtsp://camera/live", delay=4, output="out/cam") as stream:   # online mode
        for r in stream:                                  # one OnlineFrame per processed frame
            print(r.frame.t, [(s.id, s.score) for s in r.segments], stream.dropped)
"""

__version__ = "0.1.0"

# The public API: name -> module that defines it. Imported on first use, so that `import
# entitysam` (and `entitysam --help`) does not import torch.
_PUBLIC = {
    "EntitySAM": "entitysam.pipeline.loading",
    "from_pretrained": "entitysam.pipeline.loading",
    "from_checkpoint": "entitysam.pipeline.loading",
    "segment": "entitysam.pipeline.segment",
    "stream": "entitysam.pipeline.stream",
    "OnlineStream": "entitysam.pipeline.stream",
    "SegmentationResult": "entitysam.pipeline.result",
    "FrameInfo": "entitysam.pipeline.result",
    "Entity": "entitysam.pipeline.result",
    "OnlineFrame": "entitysam.pipeline.result",
    "OnlineSegment": "entitysam.pipeline.result",
    "FORMATS": "entitysam.pipeline.result",
    "EntitySAMError": "entitysam.errors",
    "compile_model": "entitysam.inference.compiled",
}

__all__ = ["__version__", *_PUBLIC]


def __getattr__(name: str):
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'entitysam' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
