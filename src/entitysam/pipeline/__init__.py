"""The pipeline layer: what runs a loaded model over a video.

loading.py  the public EntitySAM and the one model loader (from_pretrained, from_checkpoint)
segment.py  offline segmentation -> result.py (SegmentationResult, FrameInfo, Entity)
stream.py   online mode (OnlineStream): reading through live.py, model and merger in stream_steps.py,
            status in stream_state.py, files in stream_output.py, counts in stream_tally.py
demo.py     `entitysam demo`: a synthetic video segmented and scored
"""
