"""The loader as the training loop sees it: engine.data's FaceLoader plus mode switches.

Random warp off (schedule) and the pretrain -> normal switch change how samples are made, so the loader is
rebuilt with the new options; the sample stream's position carries over for a warp switch (same
facesets) and restarts for the pretrain switch (different facesets), as DFL recreates its generators.
"""

from __future__ import annotations

import attrs
import torch

from engine.recipe.specs import Recipe


class TrainLoader:
    def __init__(self, recipe: Recipe, *, rank: int, world: int, device: torch.device, random_warp: bool,
                 pretrain: bool):
        self.recipe, self.rank, self.world, self.device = recipe, rank, world, device
        self.random_warp, self.pretrain = random_warp, pretrain
        self._loader = self._build()

    def _build(self):
        from engine.data.loader import build_loader

        r = self.recipe
        data = attrs.evolve(r.data, random_warp=self.random_warp)
        return build_loader(data, resolution=r.model.resolution, face_type=r.model.face_type,
                            batch_size=r.train.batch_size, seed=r.train.seed, pretrain=self.pretrain,
                            rank=self.rank, world_size=self.world, pin_memory=self.device.type == "cuda")

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        return next(self._loader)

    def state_dict(self) -> dict:
        return self._loader.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self._loader.load_state_dict(state)

    def set_random_warp(self, on: bool) -> None:
        if on == self.random_warp:
            return
        state = self._loader.state_dict()
        self._loader.close()
        self.random_warp = on
        self._loader = self._build()
        self._loader.load_state_dict(state)

    def set_pretrain(self, on: bool) -> None:
        if on == self.pretrain:
            return
        self._loader.close()
        self.pretrain = on
        self._loader = self._build()

    def close(self) -> None:
        self._loader.close()


def make_loader(recipe: Recipe, *, rank: int, world: int, device: torch.device, random_warp: bool,
                pretrain: bool) -> TrainLoader:
    return TrainLoader(recipe, rank=rank, world=world, device=device, random_warp=random_warp, pretrain=pretrain)
