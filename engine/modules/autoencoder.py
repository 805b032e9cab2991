"""DFL DeepFakeArchi Encoder / Inter / Decoder (docs/dfl.md §2.3), NCHW, DFL attribute names and creation order.

`opts` is the archi option string (letters from ``u d t c``, docs/dfl.md §2.3 "Summary of the archi letters"):
  u  pixel_norm on the flattened encoder output (no parameters change)
  d  lowest = R/32 instead of R/16; decoder image from four heads + DCR depth_to_space; one more mask upscale
  t  5-stage encoder with two residual blocks; no Upscale in Inter; 4 upscale(+res) decoder stages
  c  x*cos(x) instead of every LeakyReLU

Submodules are registered in DFL's creation order, so ``state_dict()`` lists weights in the order DFL
creates (and saves) them, e.g. decoder: upscale0.., res0.., upscalem0.., out_conv, [out_conv1..3,
upscalem(last)], out_convm (matches the golden ``weight_names_in_order``).

Deviation from DFL: none in the math. The fp16 export casts (``use_fp16``) are not modelled here; the
exporter handles precision.
"""

from __future__ import annotations

import torch
from torch import nn

from engine.modules.blocks import Downscale, DownscaleBlock, ResidualBlock, Upscale
from engine.modules.layers import conv2d, dense, depth_to_space, pixel_norm

__all__ = ["OPT_LETTERS", "check_opts", "Encoder", "Inter", "Decoder"]

OPT_LETTERS = "udtc"


def check_opts(opts: str) -> str:
    """Return ``opts`` if every letter is one of u, d, t, c; raise ValueError otherwise (internal use:
    recipes are validated before they reach here)."""
    bad = sorted(set(opts) - set(OPT_LETTERS))
    if bad:
        raise ValueError(f"archi opts {opts!r}: unknown letter(s) {bad} (valid: u, d, t, c)")
    return opts


class Encoder(nn.Module):
    """Image (N, in_ch, R, R) -> flat code (N, 8e * r * r), r = R/16 (R/32 with t); pixel_norm with u.

    without t: ``down1`` = DownscaleBlock(in_ch, e, 4 downscales, k=5) -> (8e, R/16, R/16)
    with t:    down1 (in->e), res1, down2 (e->2e), down3 (2e->4e), down4 (4e->8e), down5 (8e->8e), res5
    Flatten is channel-major (= torch.flatten on NCHW, docs/dfl.md §2.1).
    """

    def __init__(self, in_ch: int, e_ch: int, opts: str = "", *, device=None):
        super().__init__()
        check_opts(opts)
        self.in_ch, self.e_ch = int(in_ch), int(e_ch)
        self.use_t, self.use_u = "t" in opts, "u" in opts
        c = "c" in opts
        if self.use_t:
            self.down1 = Downscale(in_ch, e_ch, 5, use_cos=c, device=device)
            self.res1 = ResidualBlock(e_ch, use_cos=c, device=device)
            self.down2 = Downscale(e_ch, e_ch * 2, 5, use_cos=c, device=device)
            self.down3 = Downscale(e_ch * 2, e_ch * 4, 5, use_cos=c, device=device)
            self.down4 = Downscale(e_ch * 4, e_ch * 8, 5, use_cos=c, device=device)
            self.down5 = Downscale(e_ch * 8, e_ch * 8, 5, use_cos=c, device=device)
            self.res5 = ResidualBlock(e_ch * 8, use_cos=c, device=device)
        else:
            self.down1 = DownscaleBlock(in_ch, e_ch, n_downscales=4, kernel_size=5, use_cos=c, device=device)

    @property
    def out_ch(self) -> int:
        return self.e_ch * 8

    def out_res(self, resolution: int) -> int:
        """Spatial size before flattening (DFL ``Encoder.get_out_res(R)``): R/16, R/32 with t."""
        return resolution // (32 if self.use_t else 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.use_t:
            x = self.res1(self.down1(x))
            x = self.down4(self.down3(self.down2(x)))
            x = self.res5(self.down5(x))
        else:
            x = self.down1(x)
        x = torch.flatten(x, 1)  # (N, 8e*r*r), channel-major
        if self.use_u:
            x = pixel_norm(x)
        return x


class Inter(nn.Module):
    """Flat (N, in_features) -> (N, ae_out_ch, r, r): dense1 -> dense2 (no activations) -> reshape to
    (ae_out_ch, lowest, lowest) -> Upscale (absent with t).

    lowest = R/32 with d else R/16; r = 2*lowest (lowest with t). Inputs with more dims are flattened.
    """

    def __init__(self, in_features: int, ae_ch: int, ae_out_ch: int, resolution: int, opts: str = "", *,
                 device=None):
        super().__init__()
        check_opts(opts)
        self.in_features, self.ae_ch, self.ae_out_ch = int(in_features), int(ae_ch), int(ae_out_ch)
        self.use_t = "t" in opts
        self.lowest = resolution // (32 if "d" in opts else 16)
        self.dense1 = dense(in_features, ae_ch, device=device)
        self.dense2 = dense(ae_ch, self.lowest * self.lowest * ae_out_ch, device=device)
        if not self.use_t:
            self.upscale1 = Upscale(ae_out_ch, ae_out_ch, use_cos="c" in opts, device=device)

    def out_res(self) -> int:
        """Spatial size of the output code (DFL ``Inter.get_out_res()``): 2*lowest, lowest with t."""
        return self.lowest if self.use_t else 2 * self.lowest

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.dense2(self.dense1(torch.flatten(x, 1)))
        x = x.reshape(x.shape[0], self.ae_out_ch, self.lowest, self.lowest)  # DFL reshape_4D: channel-major
        if not self.use_t:
            x = self.upscale1(x)
        return x


class Decoder(nn.Module):
    """Code (N, in_ch, r, r) -> (image (N, 3, R, R), mask (N, 1, R, R)), both sigmoid in [0, 1].

    Image branch: upscale_i + res_i for i in 0..2 (0..3 with t), channels 8d, 4d, 2d (t: 8d, 8d, 4d, 2d).
    Mask branch: upscalem_i, channels 8dm, 4dm, 2dm (t: 8dm, 8dm, 4dm, 2dm), plus one more to dm with d.
    Heads without d: out_conv (1×1 -> 3), out_convm (1×1 -> 1).
    Heads with d: [out_conv (1×1), out_conv1, out_conv2, out_conv3 (3×3)] concatenated in that order
    (12 ch) -> DCR depth_to_space: head i*2+j fills pixel (2h+i, 2w+j) of each 2×2 cell (docs/dfl.md §2.3).
    R = r * 8 (t: r * 16), times 2 with d.
    """

    def __init__(self, in_ch: int, d_ch: int, d_mask_ch: int, opts: str = "", *, device=None):
        super().__init__()
        check_opts(opts)
        self.in_ch, self.d_ch, self.d_mask_ch = int(in_ch), int(d_ch), int(d_mask_ch)
        self.use_d = "d" in opts
        c = "c" in opts
        if "t" in opts:
            img_chs = [d_ch * 8, d_ch * 8, d_ch * 4, d_ch * 2]
            mask_chs = [d_mask_ch * 8, d_mask_ch * 8, d_mask_ch * 4, d_mask_ch * 2]
        else:
            img_chs = [d_ch * 8, d_ch * 4, d_ch * 2]
            mask_chs = [d_mask_ch * 8, d_mask_ch * 4, d_mask_ch * 2]
        self.n_up = len(img_chs)
        # DFL creation order: all upscales, then all residual blocks, then the mask upscales, then heads.
        last = in_ch
        for i, ch in enumerate(img_chs):
            self.add_module(f"upscale{i}", Upscale(last, ch, use_cos=c, device=device))
            last = ch
        for i, ch in enumerate(img_chs):
            self.add_module(f"res{i}", ResidualBlock(ch, use_cos=c, device=device))
        last = in_ch
        for i, ch in enumerate(mask_chs):
            self.add_module(f"upscalem{i}", Upscale(last, ch, use_cos=c, device=device))
            last = ch
        self.out_conv = conv2d(img_chs[-1], 3, 1, device=device)
        if self.use_d:
            self.out_conv1 = conv2d(img_chs[-1], 3, 3, device=device)
            self.out_conv2 = conv2d(img_chs[-1], 3, 3, device=device)
            self.out_conv3 = conv2d(img_chs[-1], 3, 3, device=device)
            self.add_module(f"upscalem{len(mask_chs)}", Upscale(mask_chs[-1], d_mask_ch, use_cos=c, device=device))
            self.n_up_mask = len(mask_chs) + 1
            self.out_convm = conv2d(d_mask_ch, 1, 1, device=device)
        else:
            self.n_up_mask = len(mask_chs)
            self.out_convm = conv2d(mask_chs[-1], 1, 1, device=device)

    def image(self, z: torch.Tensor) -> torch.Tensor:
        """Image branch only: (N, in_ch, r, r) -> (N, 3, R, R)."""
        x = z
        for i in range(self.n_up):
            x = getattr(self, f"res{i}")(getattr(self, f"upscale{i}")(x))
        if self.use_d:
            x = torch.cat([self.out_conv(x), self.out_conv1(x), self.out_conv2(x), self.out_conv3(x)], dim=1)
            x = depth_to_space(x, 2)  # (N, 12, R/2, R/2) -> (N, 3, R, R)
        else:
            x = self.out_conv(x)
        return torch.sigmoid(x)

    def mask(self, z: torch.Tensor) -> torch.Tensor:
        """Mask branch only: (N, in_ch, r, r) -> (N, 1, R, R)."""
        m = z
        for i in range(self.n_up_mask):
            m = getattr(self, f"upscalem{i}")(m)
        return torch.sigmoid(self.out_convm(m))

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.image(z), self.mask(z)
