"""EntitySAM: segment and track every entity in a video, with no prompts and no labels."""

__version__ = "0.1.0"


def __getattr__(name: str):
    # `from entitysam import EntitySAM` without importing torch for every submodule user.
    if name == "EntitySAM":
        from .modeling.entitysam import EntitySAM

        return EntitySAM
    raise AttributeError(f"module 'entitysam' has no attribute {name!r}")
