"""XSeg end to end: label, train, apply, export — DFL's face segmentation without DFL.

    engine.xseg.polys     DFL's include/exclude polygons (seg_ie_polys): parse, check, rasterise
    engine.xseg.faces     the faces of a faceset with their labels (strict DFLJPG scan)
    engine.xseg.augment   DFL's XSeg training sample and augmentation (docs/dfl.md §5.7)
    engine.xseg.data      batches for training (planner + worker dataset on SAEHD's FaceLoader)
    engine.xseg.model     XSeg models from checkpoints, DFL folders or ONNX; DFL's extract()
    engine.xseg.train     the trainer (docs/dfl.md §7.2 loss and optimizer, TorchSAE's loop)
    engine.xseg.dfl_io    DFL's XSeg model folder (XSeg_256.npy, _opt.npy, XSeg_data.dat) <-> checkpoints
    engine.xseg.apply     write / remove masks and labels in facesets, fetch labelled faces (DFL's verbs)
    engine.xseg.labels    labels to and from JSON / COCO files
    engine.xseg.export    ONNX export (DFL's XSeg_model.onnx contract), verified in ONNX Runtime
    engine.xseg.labeller  a local browser labeller (127.0.0.1 only) that edits DFLJPG polygons
    engine.xseg.cli_xseg  `torchsae xseg ...`

The network itself is engine.modules.xseg (DFL's XSeg, golden-checked).
"""
