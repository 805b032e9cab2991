"""The merger: swapped faces back into the frames, then a video (DFL's merger, docs/dfl.md §10).

- config.py   the settings: the recipe's [merge] table (MergeSpec, DFL's MergerConfigMasked) + flags, DFL's mode ids
- face.py     MergeMaskedFace / MergeMasked: masks, colour transfer, warps, blends, post-processing
- model.py    the model as a batch predictor (checkpoint, DFL folder, .onnx/.dfm, parts) + its face type
- sources.py  frames (folder or video), aligned faces grouped by source frame, motion vectors
- runner.py   the resumable, multi-process driver writing merged frames
- video.py    merged frames -> H.264 mp4 with the source's audio (imageio-ffmpeg's ffmpeg)
- cli_merge.py  `torchsae merge`
XSeg masks (mask modes 6-9) come from engine.xseg.model (`open_masker`: any XSeg model form).
"""

from engine.merge.config import merge_face_type, with_flags
from engine.merge.face import Prediction, composite_faces, merge_face, merge_frame, predict_face, predict_faces

__all__ = ["merge_face_type", "with_flags", "Prediction", "merge_face", "merge_frame", "composite_faces",
           "predict_face", "predict_faces"]
