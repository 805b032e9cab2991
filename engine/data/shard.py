"""Per-rank shards of the facesets for multi-process (DDP) training (torchrun, one or many nodes).

With W ranks, rank r trains on the faces with index i ≡ r (mod W) of every faceset it reads (src, dst,
the ct references, the pretrain faceset, extra identities) and draws batch_size / W samples per step from
them with its own sample stream. So each rank decodes and caches only 1/W of the data (one node's
loader processes decode every face once in total, and a node of a multi-node job reads only its ranks'
files), and no rank's loader waits on another's. Strided shards keep each rank's share spread over the
whole faceset (a folder extracted from a video is in frame order). Every rank still sees, in
expectation, every face equally often: the union of the shards is the faceset, and the global batch is
W equal draws.

What changes with W (by design): the sample stream is the union of W per-rank streams, so a run resumed
with another world size continues with fresh streams (the checkpoint keeps every rank's position; see
engine.train.loop). A faceset with fewer faces than ranks is not sharded (every rank reads all of it).
"""

from __future__ import annotations

import copy
import logging

import numpy as np

from engine.faces.faceset import Faceset

__all__ = ["shard_faceset", "shard_seed"]

log = logging.getLogger("torchsae.data")


def shard_faceset(fs: Faceset, rank: int, world: int) -> Faceset:
    """Rank `rank`'s strided share of `fs` (samples rank, rank+W, ...); `fs` itself when W is 1 or the
    faceset has fewer faces than ranks (logged)."""
    if world <= 1:
        return fs
    if len(fs) < world:
        if rank == 0:
            log.warning("%s: %d faces for %d ranks: every rank reads the whole faceset", fs.label, len(fs), world)
        return fs
    out = copy.copy(fs)
    out.samples = fs.samples[rank::world]
    out.label = f"{fs.label} [shard {rank}/{world}]"
    return out


def shard_seed(seed: int, rank: int, world: int) -> int:
    """The sample-stream seed of rank `rank` (seed itself for one process): distinct per (seed, rank)."""
    if world <= 1:
        return int(seed)
    return int(np.random.SeedSequence([int(seed), int(rank), int(world)]).generate_state(1, dtype=np.uint32)[0])
