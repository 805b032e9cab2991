"""What the training process pays per batch to *receive* batches from loader workers (the loader's ceiling).

    python -m bench.pipeline.profile_loader --pipeline fast --res 256 --batch 32 --workers 2 [--batches 12]
    python -m bench.pipeline.profile_loader --pipeline device --res 256 --batch 32 --workers 2 [--device cuda]

The workers make batches in parallel; the training process receives each one (unpickling the worker's
message, mapping its shared memory), then DataLoader's pin-memory thread copies it into pinned memory
(CUDA) and the step reads it. However many workers there are, the loader cannot deliver more than
batch / (training-process seconds per batch) samples/s. This measures those seconds, per batch, with the
workers' output ready (the cache is filled first and the consumer waits `--gap` seconds between batches,
so the workers are never the bottleneck):

    receive     next(loader) in the main thread (the batch is ready: no waiting for workers)
    touch       first read of every page of the batch (what the pin thread's copy or a CPU step does first;
                the pages of fresh shared memory fault in here), emulated with one copy into a reused
                buffer when CUDA (and so the real pin thread) is absent
    augment     pipeline "device": DeviceAugment on the device (on CPU: in this process)

and prints the ceiling batch / (receive + touch) for each pipeline, the bytes per batch, and a cProfile
of the main thread's receive path (--profile). Figures are per batch and per sample.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import statistics
import tempfile
import time
from pathlib import Path

import torch

from engine.data.device import unpack
from engine.data.loader import build_loader
from engine.recipe.specs import DataSpec
from tests.synthetic_faces import write_synthetic_faceset


def faceset(root: Path, n: int) -> tuple[Path, Path]:
    if not (root / "src").exists():
        write_synthetic_faceset(root / "src", n, size=512, face_type="wf", seed=1, xseg_every=4)
        write_synthetic_faceset(root / "dst", n, size=512, face_type="wf", seed=2)
    return root / "src", root / "dst"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.pipeline.profile_loader", description=__doc__.split("\n\n")[0])
    ap.add_argument("--pipeline", choices=("fast", "device"), default="device")
    ap.add_argument("--res", type=int, default=256)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batches", type=int, default=12)
    ap.add_argument("--gap", type=float, default=0.3, help="seconds between batches (lets the workers get ahead)")
    ap.add_argument("--ct", default="none")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--faces", type=int, default=48)
    ap.add_argument("--profile", action="store_true", help="cProfile the main thread's receive path")
    ap.add_argument("--cache", default=os.path.join(tempfile.gettempdir(), "torchsae-profile-loader-faces"))
    args = ap.parse_args(argv)

    src, dst = faceset(Path(args.cache), args.faces)
    dev = torch.device(args.device)
    spec = DataSpec(src=str(src), dst=str(dst), ct_mode=args.ct, pipeline=args.pipeline, workers=args.workers)
    loader = build_loader(spec, resolution=args.res, face_type="f", batch_size=args.batch, seed=0, device=dev,
                          pin_memory=dev.type == "cuda")
    face_loader = getattr(loader, "loader", loader)
    augment = getattr(loader, "augment", None)
    # the raw (worker-made) stream, so receiving and augmenting are timed apart
    for _ in range(args.faces // args.batch + 2):  # fill the cache (every face decoded once)
        next(face_loader)
    recv, touch, aug, nbytes = [], [], [], 0
    scratch: dict = {}
    prof = cProfile.Profile() if args.profile else None
    for _ in range(args.batches):
        time.sleep(args.gap)  # the workers refill their prefetch slots meanwhile
        t0 = time.perf_counter()
        if prof:
            prof.enable()
        raw = next(face_loader)
        if prof:
            prof.disable()
        t1 = time.perf_counter()
        tensors = [v for v in raw.values() if torch.is_tensor(v)]
        nbytes = sum(v.numel() * v.element_size() for v in tensors)
        if dev.type == "cuda":  # the pin thread already copied (touched) it; time the host-to-device copy
            moved = {k: (v.to(dev, non_blocking=True) if torch.is_tensor(v) else v) for k, v in raw.items()}
            torch.cuda.synchronize()
        else:
            for k, v in ((k, v) for k, v in raw.items() if torch.is_tensor(v)):
                buf = scratch.get(k)
                if buf is None or buf.shape != v.shape:
                    buf = scratch[k] = torch.empty_like(v)
                buf.copy_(v)
            moved = raw
        t2 = time.perf_counter()
        if augment is not None:
            augment(unpack(moved["packed"], raw["layout"]))
            if dev.type == "cuda":
                torch.cuda.synchronize()
        t3 = time.perf_counter()
        recv.append(t1 - t0)
        touch.append(t2 - t1)
        aug.append(t3 - t2)
    loader.close()
    r, t, a = statistics.median(recv), statistics.median(touch), statistics.median(aug)
    print(f"pipeline {args.pipeline}, res {args.res}, batch {args.batch}, {args.workers} workers, device {dev}, "
          f"load {os.getloadavg()[0]:.2f}")
    print(f"  bytes per batch        {nbytes / 1e6:9.1f} MB ({nbytes / args.batch / 1e6:.2f} MB per sample) "
          f"in {len(tensors)} tensor(s)")
    print(f"  receive (next)         {r * 1e3:9.1f} ms per batch")
    print(f"  touch / copy           {t * 1e3:9.1f} ms per batch ({'host-to-device' if dev.type == 'cuda' else 'emulated pin copy'})")
    if augment is not None:
        print(f"  device augmentation    {a * 1e3:9.1f} ms per batch (on {dev})")
    print(f"  training-process ceiling {args.batch / (r + t):9.0f} samples/s (batch / (receive + touch))")
    if prof:
        s = io.StringIO()
        pstats.Stats(prof, stream=s).sort_stats("tottime").print_stats(16)
        print(s.getvalue())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
