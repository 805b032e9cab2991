"""Index sampling: DFL's IndexHost (shuffled epochs) and, for `uniform_yaw`, Index2DHost (docs/dfl.md §5.1).

DFL draws sample indices from unseeded global RNGs inside its generator processes. TorchSAE keeps DFL's
*distribution* but makes the stream a pure function of (seed, key, position), so a loader can checkpoint
its place as a few integers and continue bit-exactly after a resume:

- `ShuffleIndex(n)`: an endless sequence of random permutations of range(n), as DFL's IndexHost. The
  permutation of epoch e comes from `PCG64(SeedSequence(seed, spawn_key=key + (e,)))`, so the state is
  just `{"epoch", "pos"}`.
- `UniformYawIndex(yaws)`: DFL's uniform-yaw sampling. Samples are binned by `s_yaw = -yaw` into 128 bins
  over `linspace(-1.2, 1.2, 128)` (bin 0 also takes everything below the second edge, bin 127 everything
  at or above the last edge; empty bins dropped, NaN yaws dropped). Each draw takes the next bin from a
  shuffled permutation of the non-empty bins, then the next sample from that bin's own shuffled
  permutation, so every bin is equally likely.

`yaws` are DFL's `estimate_pitch_yaw_roll(landmarks, size=width)[1]` per sample (computed by the caller;
engine.data.dataset does it through engine.faces.landmarks).
"""

from __future__ import annotations

import logging

import numpy as np

__all__ = ["YAW_BINS", "ShuffleIndex", "UniformYawIndex", "yaw_bins"]

log = logging.getLogger("torchsae.data")

YAW_BINS = 128
_YAW_EDGES = np.linspace(-1.2, 1.2, YAW_BINS)


def yaw_bins(yaws: np.ndarray) -> list[np.ndarray]:
    """Group sample indices by DFL's 128 yaw bins (non-empty bins only, ascending order inside a bin).

    `yaws` (N,) are the estimated yaws in radians; DFL bins `-yaw`. Bin g (0 < g < 127) is
    [edge_g, edge_g+1); bin 0 is (-inf, edge_1); bin 127 is [edge_127, +inf). NaN yaws fall in no bin.
    """
    s = -np.asarray(yaws, dtype=np.float64).reshape(-1)
    g = np.clip(np.searchsorted(_YAW_EDGES, s, side="right") - 1, 0, YAW_BINS - 1)
    ok = np.isfinite(s)
    out = []
    for b in range(YAW_BINS):
        members = np.flatnonzero(ok & (g == b))
        if members.size:
            out.append(members)
    return out


class ShuffleIndex:
    """Endless shuffled epochs over range(n) (DFL IndexHost), addressable by (epoch, pos).

    `key` separates independent streams under one seed (src, dst, ct sample, each yaw bin ...).
    """

    def __init__(self, n: int, seed: int, key: tuple[int, ...]):
        if n <= 0:
            raise ValueError(f"ShuffleIndex needs n >= 1, got {n}")
        self.n = int(n)
        self.seed = int(seed)
        self.key = tuple(int(k) for k in key)
        self.epoch = 0
        self.pos = 0
        self._perm_epoch = -1
        self._perm: np.ndarray | None = None

    def _permutation(self) -> np.ndarray:
        if self._perm_epoch != self.epoch:
            ss = np.random.SeedSequence(self.seed, spawn_key=self.key + (self.epoch,))
            self._perm = np.random.Generator(np.random.PCG64(ss)).permutation(self.n)
            self._perm_epoch = self.epoch
        return self._perm

    def next(self) -> int:
        """The next index; a new shuffled epoch starts when the current one is used up."""
        if self.pos >= self.n:
            self.epoch += 1
            self.pos = 0
        i = int(self._permutation()[self.pos])
        self.pos += 1
        return i

    def state_dict(self) -> dict:
        return {"n": self.n, "epoch": self.epoch, "pos": self.pos}

    def load_state_dict(self, state: dict) -> None:
        if int(state["n"]) != self.n:
            # The faceset changed size since the checkpoint: the old positions mean nothing any more.
            log.warning("sample index: the faceset has %d samples, the checkpoint was taken with %d; "
                        "restarting its shuffled order (epoch %d kept)", self.n, int(state["n"]), int(state["epoch"]))
            self.epoch, self.pos = int(state["epoch"]) + 1, 0
            return
        self.epoch, self.pos = int(state["epoch"]), int(state["pos"])


class UniformYawIndex:
    """DFL Index2DHost over yaw bins: a shuffled bin, then the next sample of that bin's shuffled order."""

    def __init__(self, yaws: np.ndarray, seed: int, key: tuple[int, ...]):
        self.bins = yaw_bins(yaws)
        if not self.bins:
            raise ValueError("uniform yaw: no sample has a finite yaw")
        key = tuple(int(k) for k in key)
        self.n = int(np.asarray(yaws).size)
        self._bin_index = ShuffleIndex(len(self.bins), seed, key + (0,))
        self._in_bin = [ShuffleIndex(len(b), seed, key + (1, j)) for j, b in enumerate(self.bins)]

    def next(self) -> int:
        b = self._bin_index.next()
        return int(self.bins[b][self._in_bin[b].next()])

    def state_dict(self) -> dict:
        return {"n": self.n, "bins": self._bin_index.state_dict(), "in_bin": [h.state_dict() for h in self._in_bin]}

    def load_state_dict(self, state: dict) -> None:
        if int(state["n"]) != self.n or len(state["in_bin"]) != len(self._in_bin):
            log.warning("uniform yaw index: the faceset changed since the checkpoint (%d samples in %d bins, "
                        "was %d in %d); restarting the yaw order", self.n, len(self.bins), int(state["n"]),
                        len(state["in_bin"]))
            return
        self._bin_index.load_state_dict(state["bins"])
        for h, s in zip(self._in_bin, state["in_bin"]):
            h.load_state_dict(s)
