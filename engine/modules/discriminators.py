"""SAEHD's discriminators (docs/dfl.md §3.5): DFL's UNetPatchDiscriminator (GAN, scope ``D_src``) and
CodeDiscriminator (true face, scope ``dis``), NCHW, with DFL's parameter names and weight-file key maps.

Matched DFL behaviour:
  * `find_archi(patch_size)`: DFL's search over 3×3 conv stacks (first stride 2, later 1 or 2, ≤ 9 layers)
    for the receptive field closest to the patch size (fewest layers, then most total stride; ties in
    distance go to the smaller field).
  * Conv "SAME" = symmetric zero pad ``((k−1)·1+1)//2`` then VALID (k=4 → pad 2, k=3 → pad 1).
  * ConvTranspose "SAME", k=3 stride 2 = the full transposed conv (padding 0, 2n+1) cropped to its first
    2n rows/columns (TF aligns at the start); stride 1 = padding 1.
  * LeakyReLU 0.2 in the UNet discriminator, 0.1 in the code discriminator; outputs are logits.
  * Glorot-uniform weights, zero biases (§2.1).
Parameter names mirror DFL's variables: ``in_conv``, ``convs_{i}``, ``upconvs_{j}``, ``center_out``,
``center_conv``, ``out_conv`` (UNet, DFL scope ``D_src``); ``convs_{i}``, ``out_conv`` (code, scope ``dis``),
so torch ``convs_0.weight`` is DFL's ``D_src/convs_0/weight:0``. TF layouts convert as
conv ``(kh,kw,in,out) → (out,in,kh,kw)`` and conv-transpose ``(kh,kw,out,in) → (in,out,kh,kw)``; both are
``W.transpose(3, 2, 0, 1)`` (engine.dfl.keymap; engine.dfl.convert loads and writes DFL's weight files).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from engine.errors import TorchSAEError

__all__ = [
    "find_archi",
    "receptive_field",
    "UNetPatchDiscriminator",
    "CodeDiscriminator",
    "code_discriminator_n_convs",
    "check_unet_patch_d_resolution",
    "code_discriminator_for",
    "gan_discriminator_for",
]


# ---------------------------------------------------------------------------------------------------------
# find_archi


def receptive_field(layers: list[tuple[int, int]] | list[list[int]]) -> int:
    """Receptive field of a conv stack [(k, s), ...]: ``k0 + Σ_{i≥1} (k_i − 1)·∏_{j<i} s_j`` (§3.5)."""
    rf = layers[0][0]
    stride_prod = 1
    for i in range(1, len(layers)):
        stride_prod *= layers[i - 1][1]
        rf += (layers[i][0] - 1) * stride_prod
    return rf


def find_archi(patch_size: int, max_layers: int = 9) -> list[list[int]]:
    """DFL's ``UNetPatchDiscriminator.find_archi`` (§3.5): [[kernel, stride], ...] for `patch_size`.

    Every stack has 1..max_layers 3×3 convs, the first with stride 2 and each later one stride 1 or 2.
    For each receptive field the preferred stack has the fewest layers, then the largest total stride
    (the first one enumerated wins a full tie; enumeration per layer count goes from the all-stride-2
    pattern down, bit i of the counter giving layer i+1 stride 2). The field closest to `patch_size` is
    chosen, the smaller one on a tie.
    """
    if patch_size < 1:
        raise ValueError(f"find_archi: patch_size must be >= 1, got {patch_size!r}")
    best: dict[int, tuple[int, int, list[list[int]]]] = {}
    for n in range(1, max_layers + 1):
        for val in range((1 << (n - 1)) - 1, -1, -1):
            layers = [[3, 2]] + [[3, 2 if val & (1 << i) else 1] for i in range(n - 1)]
            total = sum(s for _, s in layers)
            rf = receptive_field(layers)
            cur = best.get(rf)
            if cur is None or n < cur[0] or (n == cur[0] and total > cur[1]):
                best[rf] = (n, total, layers)
    fields = sorted(best)
    chosen = min(fields, key=lambda f: (abs(f - patch_size), f))
    return [list(x) for x in best[chosen][2]]


# ---------------------------------------------------------------------------------------------------------
# layers


def _glorot_(conv: nn.Module) -> None:
    # TF's glorot_uniform: limit = sqrt(6 / (fan_in + fan_out)) with receptive-field-scaled fans; torch's
    # xavier_uniform_ computes the same fans for conv and conv-transpose weights (symmetric in in/out).
    nn.init.xavier_uniform_(conv.weight)
    nn.init.zeros_(conv.bias)


def _conv(in_ch: int, out_ch: int, k: int, stride: int = 1) -> nn.Conv2d:
    c = nn.Conv2d(in_ch, out_ch, k, stride=stride, padding=((k - 1) + 1) // 2)  # DFL "SAME" (§2.1)
    _glorot_(c)
    return c


class _ConvTransposeSame(nn.Module):
    """TF ``conv2d_transpose(padding='SAME')`` for k=3: stride 2 → full transposed conv cropped at the
    end to 2H×2W; stride 1 → padding 1. Weight is torch's (in, out, kh, kw)."""

    def __init__(self, in_ch: int, out_ch: int, k: int, stride: int):
        super().__init__()
        self.stride = stride
        self.k = k
        # output of a padding-0 transposed conv is (H−1)·s + k; TF keeps the first H·s rows/cols, i.e.
        # crops max(k − s, 0) at the end (pt = max(k − s, 0)//2 at the start, the rest at the end).
        self.crop_start = max(k - stride, 0) // 2
        self.weight = nn.Parameter(torch.empty(in_ch, out_ch, k, k))
        self.bias = nn.Parameter(torch.empty(out_ch))
        _glorot_(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The bias is added after the crop, as DFL does (conv2d_transpose, then bias_add). Passing it to
        # conv_transpose2d gives the same forward, but oneDNN's fused bias gradient on CPU then sums the
        # (2H+1)·(2W+1)·N upstream values per channel in float32 with ~1e-4 relative error; autograd's
        # reduction of the cropped gradient is exact to float rounding.
        y = F.conv_transpose2d(x, self.weight, None, stride=self.stride)
        h, w = x.shape[-2] * self.stride, x.shape[-1] * self.stride
        s = self.crop_start
        return y[..., s:s + h, s:s + w] + self.bias.view(1, -1, 1, 1)


class UNetPatchDiscriminator(nn.Module):
    """DFL's ``UNetPatchDiscriminator(patch_size, in_ch, base_ch)`` (§3.5); forward → (center, full) logits.

    x (N, in_ch, H, W) → ``center_out`` (N, 1, H/∏s, W/∏s) and ``out`` (N, 1, H, W), both raw logits.
    H and W must be divisible by 2^(number of stride-2 layers) (`check_unet_patch_d_resolution`); DFL
    fails on other sizes too (its skip concatenation mismatches).
    """

    def __init__(self, patch_size: int, in_ch: int = 3, base_ch: int = 16, max_layers: int = 9):
        super().__init__()
        self.patch_size = int(patch_size)
        self.layers = find_archi(self.patch_size, max_layers)
        n = len(self.layers)
        # level_chs[i] for i = -1..n-1 (DFL's dict keyed from -1)
        chs = [min(base_ch * (2**i), 512) for i in range(n + 1)]
        level = {i - 1: c for i, c in enumerate(chs)}
        self.level_chs = level
        self.in_conv = _conv(in_ch, level[-1], 1)
        for i, (k, s) in enumerate(self.layers):
            setattr(self, f"convs_{i}", _conv(level[i - 1], level[i], k, s))
        # upconvs_0 is the deepest (i = n-1); every other one reads the concatenation (2·level[i]).
        for j, i in enumerate(reversed(range(n))):
            k, s = self.layers[i]
            in_c = level[i] * (2 if i != n - 1 else 1)
            setattr(self, f"upconvs_{j}", _ConvTransposeSame(in_c, level[i - 1], k, s))
        self.out_conv = _conv(level[-1] * 2, 1, 1)
        self.center_out = _conv(level[n - 1], 1, 1)
        self.center_conv = _conv(level[n - 1], level[n - 1], 1)

    @property
    def n_layers(self) -> int:
        return len(self.layers)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        check_unet_patch_d_resolution(x.shape[-2], x.shape[-1], self.patch_size, layers=self.layers)
        x = F.leaky_relu(self.in_conv(x), 0.2)
        encs = []
        for i in range(self.n_layers):
            encs.insert(0, x)
            x = F.leaky_relu(getattr(self, f"convs_{i}")(x), 0.2)
        center_out = self.center_out(x)
        x = F.leaky_relu(self.center_conv(x), 0.2)
        for j, enc in enumerate(encs):
            x = F.leaky_relu(getattr(self, f"upconvs_{j}")(x), 0.2)
            x = torch.cat([enc, x], dim=1)  # skip first, as DFL
        return center_out, self.out_conv(x)


def check_unet_patch_d_resolution(height: int, width: int, patch_size: int,
                                  layers: list[list[int]] | None = None) -> None:
    """Raise TorchSAEError unless an H×W image fits the UNet discriminator chosen for `patch_size`.

    Each stride-2 conv halves the size (rounding up) and its transposed conv doubles it back, so every
    stride-2 stage needs an even input; i.e. H and W divisible by 2^(number of stride-2 layers).
    """
    layers = find_archi(patch_size) if layers is None else layers
    n2 = sum(1 for _, s in layers if s == 2)
    q = 2**n2
    if height % q or width % q:
        raise TorchSAEError(
            f"GAN discriminator: gan_patch_size {patch_size} gives {len(layers)} layers with {n2} stride-2 "
            f"stages, which needs the resolution to be a multiple of {q}; got {height}x{width}. "
            f"Use a smaller gan_patch_size (default resolution//8).")


def code_discriminator_n_convs(code_res: int) -> int:
    """n = 1 + code_res // 8 (§3.5)."""
    return 1 + code_res // 8


class CodeDiscriminator(nn.Module):
    """DFL's ``CodeDiscriminator(in_ch, code_res, ch=256)`` (§3.5) on the inter output (N, in_ch, r, r).

    ``n = 1 + code_res//8`` convs, conv i: ``ch·min(2^i, 8)`` channels, k = 4 (i = 0) or 3, stride 2, DFL
    SAME padding (2 for k=4, 1 for k=3), LeakyReLU 0.1; then ``out_conv`` 1×1 → 1 logit map.
    E.g. code_res 16: 16 → 9 → 5 → 3; code_res 8: 8 → 5 → 3.
    """

    def __init__(self, in_ch: int, code_res: int, ch: int = 256):
        super().__init__()
        self.n_convs = code_discriminator_n_convs(code_res)
        prev = in_ch
        for i in range(self.n_convs):
            cur = ch * min(2**i, 8)
            setattr(self, f"convs_{i}", _conv(prev, cur, 4 if i == 0 else 3, 2))
            prev = cur
        self.out_conv = _conv(prev, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i in range(self.n_convs):
            x = F.leaky_relu(getattr(self, f"convs_{i}")(x), 0.1)
        return self.out_conv(x)


def code_discriminator_for(model: nn.Module, ae_dims: int) -> CodeDiscriminator:
    """SAEHD's code discriminator for a DF model (§3.5): on the inter output, ``ae_dims`` channels."""
    return CodeDiscriminator(in_ch=ae_dims, code_res=model.inter.out_res())


def gan_discriminator_for(resolution: int, gan_patch_size: int, gan_dims: int) -> UNetPatchDiscriminator:
    """SAEHD's GAN discriminator D_src (§3.5): patch ``gan_patch_size`` (0: DFL's default resolution//8)."""
    return UNetPatchDiscriminator(patch_size=gan_patch_size or resolution // 8, in_ch=3, base_ch=gan_dims)
