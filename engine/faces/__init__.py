"""The face library shared by extraction, training data, merging and export: DFLJPG files and their
metadata, 68-point landmarks and DFL's alignment, face types, landmark masks, colour transfer, facesets
(folders, DFL's faceset.pak, TorchSAE's faceset.tspak) and `torchsae faceset`."""
