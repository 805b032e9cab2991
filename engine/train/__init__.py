"""Training: `engine.train.loop.train(recipe)` builds a Trainer (build.py) and runs the loop (loop.py);
loop.py's docstring maps every file of this package to its job."""
