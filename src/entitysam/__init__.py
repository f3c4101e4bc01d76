"""EntitySAM: segment and track every entity in a video, with no prompts and no labels."""

__version__ = "0.1.0"
