"""Swap quality you can measure (`torchsae eval`, `[train].eval_every`).

No face-swap trainer reports how good a swap is; this package measures it with dlib's models shipped in
the lock (engine.eval.analyzer): identity transfer (128-D descriptors of the swapped dst faces against
the src and dst identities, calibrated on real faces), pose and expression fidelity (68-landmark NME,
yaw/pitch error against the dst face replaced) and reconstruction per identity (masked DSSIM with DFL's
windows, PSNR, MSE) on faces held out of training (engine.data.holdout).

    faces.py      held-out / given faces -> model geometry, like training targets
    analyzer.py   dlib: face rectangle, landmarks, chip, embedding, detection
    metrics.py    the metric formulas (pure functions)
    models.py     checkpoints, run folders, DFL folders, .onnx/.dfm, --parts behind one interface
    evaluate.py   Evaluator: real faces analysed once, then any model of that geometry -> EvalResult
    report.py     eval.json, report.html, sample grids, metrics over training steps
    run.py        evaluate_paths: several models -> one report (what the CLI runs)
    training.py   TrainingEvaluator: [train].eval_every inside the training loop
    cli_eval.py   torchsae eval
"""
