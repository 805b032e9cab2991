"""The training-data pipeline, the consumer of [data]: batch planning and index sampling, the SAEHD sample
pipelines ("dfl", "fast", and "device": augmentation on the training device, device.py), the worker
loader, what "auto" means for the pipeline and the worker count (auto.py), per-rank faceset shards under
DDP (shard.py), and the loader the training loop drives (`make_loader`). Face files, landmarks and masks
come from engine.faces."""
