"""The loader as the training loop sees it (`make_loader`): engine.data.loader's batches for src/dst and
for every extra identity of an explicit graph, plus the mode switches.

Random warp off (schedule) and the pretrain -> normal switch change how samples are made, so the loader is
rebuilt with the new options; the sample stream's position carries over for a warp switch (same
facesets) and restarts for the pretrain switch (different facesets), as DFL recreates its generators.
"""

from __future__ import annotations

import attrs
import torch

from engine.data.loader import build_loader
from engine.recipe.specs import Recipe


class TrainLoader:
    def __init__(self, recipe: Recipe, *, rank: int, world: int, device: torch.device, random_warp: bool,
                 pretrain: bool):
        self.recipe, self.rank, self.world, self.device = recipe, rank, world, device
        self.random_warp, self.pretrain = random_warp, pretrain
        self._loader = self._build()
        # identities beyond src/dst (explicit graphs): one loader each, its src half renamed to the identity
        self._extra = {name: self._build(faceset=path, seed_shift=i + 1)
                       for i, (name, path) in enumerate(sorted(recipe.data.identities.items()))}

    def _build(self, faceset: str | None = None, seed_shift: int = 0):
        r = self.recipe
        data = attrs.evolve(r.data, random_warp=self.random_warp)
        if faceset is not None:
            data = attrs.evolve(data, src=faceset, dst=faceset, ct_mode="none", eval_fraction=0.0, eval_src="",
                                eval_dst="")  # extra identities are not split (engine.data.holdout)
        return build_loader(data, resolution=r.model.resolution, face_type=r.model.face_type,
                            batch_size=r.train.batch_size, seed=r.train.seed + 7919 * seed_shift,
                            pretrain=self.pretrain and faceset is None, rank=self.rank, world_size=self.world,
                            pin_memory=self.device.type == "cuda", warp_impl=r.compile.kernels,
                            device=self.device)

    @property
    def held_out(self):
        """The src/dst faces kept out of training (engine.data.holdout.HeldOut), or None."""
        return self._loader.held_out

    def __iter__(self):
        return self

    def describe(self) -> dict:
        """{"pipeline", "workers"} as resolved for this run (summary.json)."""
        return self._loader.describe()

    def __next__(self) -> dict:
        batch = next(self._loader)
        for name, loader in self._extra.items():
            b = next(loader)
            for key in ("warped_src", "target_src", "target_srcm", "target_srcm_em"):
                batch[key.replace("src", name)] = b[key]
        return batch

    def state_dict(self) -> dict:
        st = self._loader.state_dict()
        if self._extra:
            st = {"main": st, "identities": {n: l.state_dict() for n, l in self._extra.items()}}
        return st

    def load_state_dict(self, state: dict) -> None:
        if self._extra:
            self._loader.load_state_dict(state["main"])
            for n, l in self._extra.items():
                l.load_state_dict(state["identities"][n])
        else:
            self._loader.load_state_dict(state)

    def set_random_warp(self, on: bool) -> None:
        if on == self.random_warp:
            return
        state = self.state_dict()
        self.close()
        self.random_warp = on
        self._loader = self._build()
        self._extra = {name: self._build(faceset=path, seed_shift=i + 1)
                       for i, (name, path) in enumerate(sorted(self.recipe.data.identities.items()))}
        self.load_state_dict(state)

    def set_pretrain(self, on: bool) -> None:
        if on == self.pretrain:
            return
        self._loader.close()
        self.pretrain = on
        self._loader = self._build()

    def close(self) -> None:
        self._loader.close()
        for loader in self._extra.values():
            loader.close()


def make_loader(recipe: Recipe, *, rank: int, world: int, device: torch.device, random_warp: bool,
                pretrain: bool) -> TrainLoader:
    return TrainLoader(recipe, rank=rank, world=world, device=device, random_warp=random_warp, pretrain=pretrain)
