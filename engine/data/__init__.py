"""The training-data pipeline, the consumer of [data]: batch planning and index sampling, the SAEHD sample
pipelines ("dfl", "fast"), the worker loader and the loader the training loop drives (`make_loader`).
Face files, landmarks and masks come from engine.faces."""
