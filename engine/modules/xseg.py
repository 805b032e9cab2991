"""DFL's XSeg segmentation network (docs/dfl.md §7.1) in NCHW torch, and `XSegNet.extract` (docs/dfl.md §7.3).

    net = XSeg()                                  # base_ch 32: 17,569,317 parameters, 222 tensors
    mask = XSegExtractor(net)(face_bgr_256)       # (256,256,3) BGR [0,1] -> (256,256,1), DFL's extract()

DFL's weight file (XSeg_256.npy) is read into an XSeg by engine.xseg.model (`read_dfl_xseg`).

Structure (c = base_ch, input 3×256×256 BGR in [0, 1]):
- ConvBlock = Conv2D 3×3 pad 1 (+bias) -> FRN -> TLU; UpConvBlock = ConvTranspose 3×3 stride 2 -> FRN -> TLU.
- FRN (filter response norm): ``x·rsqrt(mean_HW(x²) + |eps|)·γ + β`` with a trainable scalar eps.
- TLU: ``max(x, τ)`` per channel.
- BlurPool(f): binomial f-tap kernel (outer product, sum 1), zero pad [⌊(f-1)/2⌋, ⌈(f-1)/2⌉], depthwise
  stride 2. A constant buffer (not a saved weight, not in the state dict).
- Encoder: conv01-02 (c) bp0 f4 | conv11-12 (2c) bp1 f3 | conv21-22 (4c) bp2 f2 | conv31-33 (8c) bp3 |
  conv41-43 (8c) bp4 | conv51-53 (8c) bp5 -> 8c×4×4; skips x0..x5 are the last conv of each level.
- Bottleneck: channel-major flatten -> dense1 (-> 512) -> dense2 (-> 8c·4·4), no activation -> 8c×4×4.
- Decoder: up5 (->4c), cat [up, x5] (upsampled tensor FIRST), uconv53-51 (8c); same for 4, 3; up2 (->4c),
  cat x2, uconv22-21 (4c); up1 (->2c), cat x1, uconv12-11 (2c); up0 (->c), cat x0, uconv02-01 (c);
  out_conv 3×3 -> out_ch logits. ``forward`` returns (logits, sigmoid(logits)).

DFL alignment details kept (golden extra/xseg_base4_res256 proves them):
- DFL's Conv2D "SAME" is a symmetric pad of 1 for k=3 (= torch padding=1).
- DFL's Conv2DTranspose(k3, s2, TF SAME) equals the FULL transposed conv (torch padding=0, output 2H+1)
  cropped at the END to 2H (quirk §12.4). Its kernel (kh,kw,out,in) maps to torch (in,out,kh,kw) by
  transpose(3,2,0,1), no flip.
- ``pretrain=True`` replaces every skip tensor by zeros (Model_XSeg pretraining, §7.2).

Names mirror DFL's variable scopes: torch ``conv01.frn.eps`` <-> DFL ``XSeg/conv01/frn/eps:0`` (key
``conv01/frn/eps:0`` inside ``XSeg_256.npy``, a protocol-4 pickle of {name: array}, docs/dfl.md §8.2).
Deviation: none in the math. Numerically the port agrees with DFL's TensorFlow to ~1.2e-3 on the logits
(TF's float32 reductions in the FRN means differ in rounding; DFL's own NCHW and NHWC paths differ by as
much), hence the golden tolerances 2e-3 (logits) / 5e-4 (sigmoid).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from engine.modules.layers import glorot_init_

__all__ = ["FRNorm2D", "TLU", "BlurPool", "ConvBlock", "UpConvBlock", "XSeg", "XSegExtractor", "XSEG_RESOLUTION"]

XSEG_RESOLUTION = 256


class FRNorm2D(nn.Module):
    """Filter response normalisation: ``x·rsqrt(mean_HW(x²) + |eps|)·weight + bias`` (DFL FRNorm2D).

    weight (C,) init 1, bias (C,) init 0, eps (1,) init 1e-6 and trainable (its absolute value is used).
    Input/output (N, C, H, W).
    """

    def __init__(self, ch: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(ch))
        self.bias = nn.Parameter(torch.zeros(ch))
        self.eps = nn.Parameter(torch.full((1,), 1e-6))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        nu2 = torch.mean(x * x, dim=(2, 3), keepdim=True)  # (N, C, 1, 1)
        x = x * torch.rsqrt(nu2 + torch.abs(self.eps))
        return x * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)


class TLU(nn.Module):
    """Thresholded linear unit ``max(x, tau)``, tau (C,) init 0 (DFL TLU)."""

    def __init__(self, ch: int):
        super().__init__()
        self.tau = nn.Parameter(torch.zeros(ch))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.maximum(x, self.tau.view(1, -1, 1, 1))


class BlurPool(nn.Module):
    """Anti-aliased stride-2 downsampling (DFL BlurPool): binomial kernel, asymmetric zero pad, depthwise.

    filt 2 -> [1,1], 3 -> [1,2,1], 4 -> [1,3,3,1]; 2-D kernel = outer(a, a)/sum. Pad
    [⌊(f-1)/2⌋, ⌈(f-1)/2⌉] on H and W (bottom/right gets the extra one). (N,C,H,W) -> (N,C,H/2,W/2) for even H.
    """

    _TAPS = {1: [1.0], 2: [1.0, 1.0], 3: [1.0, 2.0, 1.0], 4: [1.0, 3.0, 3.0, 1.0], 5: [1.0, 4.0, 6.0, 4.0, 1.0]}

    def __init__(self, filt_size: int = 3, stride: int = 2):
        super().__init__()
        if filt_size not in self._TAPS:
            raise ValueError(f"BlurPool filt_size {filt_size}: valid {sorted(self._TAPS)}")
        a = torch.tensor(self._TAPS[filt_size], dtype=torch.float32)
        k = torch.outer(a, a)
        self.register_buffer("kernel", (k / k.sum())[None, None], persistent=False)  # (1, 1, f, f)
        self.filt_size, self.stride = filt_size, stride
        self.pad = ((filt_size - 1) // 2, -(-(filt_size - 1) // 2))  # (floor, ceil)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = x.shape[1]
        lo, hi = self.pad
        x = F.pad(x, (lo, hi, lo, hi))  # (left, right, top, bottom)
        return F.conv2d(x, self.kernel.to(x.dtype).expand(c, 1, -1, -1), stride=self.stride, groups=c)

    def extra_repr(self) -> str:
        return f"filt_size={self.filt_size}, stride={self.stride}, pad={self.pad}"


class ConvBlock(nn.Module):
    """Conv2D 3×3 (pad 1, bias) -> FRN -> TLU; (N, in, H, W) -> (N, out, H, W)."""

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        self.conv = glorot_init_(nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=True))
        self.frn = FRNorm2D(out_ch)
        self.tlu = TLU(out_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.tlu(self.frn(self.conv(x)))


class UpConvBlock(nn.Module):
    """ConvTranspose 3×3 stride 2 with DFL/TF-SAME alignment -> FRN -> TLU; (N,in,H,W) -> (N,out,2H,2W).

    TF SAME for k3 s2 computes out[2i+d] += x[i]·w[d] for d = 0..2 and keeps the first 2H rows: the full
    transposed conv (padding 0, size 2H+1) cropped at the end (docs/dfl.md §12.4).
    """

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        self.conv = glorot_init_(nn.ConvTranspose2d(in_ch, out_ch, 3, stride=2, padding=0, bias=True))
        self.frn = FRNorm2D(out_ch)
        self.tlu = TLU(out_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[2], x.shape[3]
        y = self.conv(x)[:, :, : 2 * h, : 2 * w]
        return self.tlu(self.frn(y))


class XSeg(nn.Module):
    """DFL's XSeg(in_ch=3, base_ch=32, out_ch=1) at `resolution` (DFL fixes 256); see the module doc.

    forward(x (N, in_ch, R, R) BGR [0,1], pretrain=False) -> (logits, sigmoid(logits)), each (N, out_ch, R, R).
    """

    def __init__(self, in_ch: int = 3, base_ch: int = 32, out_ch: int = 1, resolution: int = XSEG_RESOLUTION):
        super().__init__()
        if resolution % 64 != 0 or resolution < 64:
            raise ValueError(f"XSeg resolution {resolution}: must be a multiple of 64 (six stride-2 poolings)")
        c = base_ch
        self.in_ch, self.base_ch, self.out_ch, self.resolution = in_ch, base_ch, out_ch, resolution
        self.conv01, self.conv02 = ConvBlock(in_ch, c), ConvBlock(c, c)
        self.bp0 = BlurPool(4)
        self.conv11, self.conv12 = ConvBlock(c, 2 * c), ConvBlock(2 * c, 2 * c)
        self.bp1 = BlurPool(3)
        self.conv21, self.conv22 = ConvBlock(2 * c, 4 * c), ConvBlock(4 * c, 4 * c)
        self.bp2 = BlurPool(2)
        self.conv31, self.conv32, self.conv33 = ConvBlock(4 * c, 8 * c), ConvBlock(8 * c, 8 * c), ConvBlock(8 * c, 8 * c)
        self.bp3 = BlurPool(2)
        self.conv41, self.conv42, self.conv43 = ConvBlock(8 * c, 8 * c), ConvBlock(8 * c, 8 * c), ConvBlock(8 * c, 8 * c)
        self.bp4 = BlurPool(2)
        self.conv51, self.conv52, self.conv53 = ConvBlock(8 * c, 8 * c), ConvBlock(8 * c, 8 * c), ConvBlock(8 * c, 8 * c)
        self.bp5 = BlurPool(2)

        self.low = resolution // 64  # spatial side after the six poolings (4 at 256)
        flat = self.low * self.low * 8 * c
        self.dense1 = glorot_init_(nn.Linear(flat, 512))
        self.dense2 = glorot_init_(nn.Linear(512, flat))

        self.up5 = UpConvBlock(8 * c, 4 * c)
        self.uconv53, self.uconv52, self.uconv51 = ConvBlock(12 * c, 8 * c), ConvBlock(8 * c, 8 * c), ConvBlock(8 * c, 8 * c)
        self.up4 = UpConvBlock(8 * c, 4 * c)
        self.uconv43, self.uconv42, self.uconv41 = ConvBlock(12 * c, 8 * c), ConvBlock(8 * c, 8 * c), ConvBlock(8 * c, 8 * c)
        self.up3 = UpConvBlock(8 * c, 4 * c)
        self.uconv33, self.uconv32, self.uconv31 = ConvBlock(12 * c, 8 * c), ConvBlock(8 * c, 8 * c), ConvBlock(8 * c, 8 * c)
        self.up2 = UpConvBlock(8 * c, 4 * c)
        self.uconv22, self.uconv21 = ConvBlock(8 * c, 4 * c), ConvBlock(4 * c, 4 * c)
        self.up1 = UpConvBlock(4 * c, 2 * c)
        self.uconv12, self.uconv11 = ConvBlock(4 * c, 2 * c), ConvBlock(2 * c, 2 * c)
        self.up0 = UpConvBlock(2 * c, c)
        self.uconv02, self.uconv01 = ConvBlock(2 * c, c), ConvBlock(c, c)
        self.out_conv = glorot_init_(nn.Conv2d(c, out_ch, 3, padding=1, bias=True))

    def forward(self, x: torch.Tensor, pretrain: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.conv01(x)
        x = x0 = self.conv02(x)  # (N, c, R, R)
        x = self.bp0(x)
        x = self.conv11(x)
        x = x1 = self.conv12(x)  # (N, 2c, R/2, R/2)
        x = self.bp1(x)
        x = self.conv21(x)
        x = x2 = self.conv22(x)  # (N, 4c, R/4, R/4)
        x = self.bp2(x)
        x = self.conv31(x)
        x = self.conv32(x)
        x = x3 = self.conv33(x)  # (N, 8c, R/8, R/8)
        x = self.bp3(x)
        x = self.conv41(x)
        x = self.conv42(x)
        x = x4 = self.conv43(x)  # (N, 8c, R/16, R/16)
        x = self.bp4(x)
        x = self.conv51(x)
        x = self.conv52(x)
        x = x5 = self.conv53(x)  # (N, 8c, R/32, R/32)
        x = self.bp5(x)  # (N, 8c, R/64, R/64)

        n = x.shape[0]
        x = self.dense2(self.dense1(torch.flatten(x, 1)))  # channel-major flatten, as DFL's nn.flatten
        x = x.view(n, 8 * self.base_ch, self.low, self.low)

        if pretrain:  # Model_XSeg pretraining: the decoder sees no skip connections
            x0, x1, x2, x3, x4, x5 = (torch.zeros_like(t) for t in (x0, x1, x2, x3, x4, x5))

        x = self.up5(x)
        x = self.uconv53(torch.cat([x, x5], dim=1))
        x = self.uconv52(x)
        x = self.uconv51(x)
        x = self.up4(x)
        x = self.uconv43(torch.cat([x, x4], dim=1))
        x = self.uconv42(x)
        x = self.uconv41(x)
        x = self.up3(x)
        x = self.uconv33(torch.cat([x, x3], dim=1))
        x = self.uconv32(x)
        x = self.uconv31(x)
        x = self.up2(x)
        x = self.uconv22(torch.cat([x, x2], dim=1))
        x = self.uconv21(x)
        x = self.up1(x)
        x = self.uconv12(torch.cat([x, x1], dim=1))
        x = self.uconv11(x)
        x = self.up0(x)
        x = self.uconv02(torch.cat([x, x0], dim=1))
        x = self.uconv01(x)
        logits = self.out_conv(x)
        return logits, torch.sigmoid(logits)


class XSegExtractor:
    """DFL's ``XSegNet.extract`` (docs/dfl.md §7.3): mask = sigmoid(net(img)), clipped to [0, 1], values < 0.1 -> 0.

    __call__(img): (H, W, 3) or (N, H, W, 3) float BGR in [0, 1] with H = W = net.resolution, NHWC as DFL ->
    (H, W, 1) or (N, H, W, 1) float32. Runs without gradients, in batches of `batch_size`.
    """

    def __init__(self, net: XSeg, device: str | torch.device | None = None, batch_size: int = 4):
        self.device = torch.device(device) if device is not None else next(net.parameters()).device
        self.net = net.to(self.device).eval()
        self.resolution = net.resolution
        self.batch_size = int(batch_size)

    def __call__(self, img: np.ndarray) -> np.ndarray:
        x = np.asarray(img, dtype=np.float32)
        single = x.ndim == 3
        if single:
            x = x[None]
        r = self.resolution
        if x.ndim != 4 or x.shape[1:] != (r, r, 3):
            raise ValueError(f"XSeg extract: expected (N,{r},{r},3) or ({r},{r},3) BGR images, got {x.shape}")
        outs = []
        with torch.no_grad():
            for i in range(0, x.shape[0], self.batch_size):
                t = torch.from_numpy(np.ascontiguousarray(x[i:i + self.batch_size].transpose(0, 3, 1, 2))).to(self.device)
                outs.append(self.net(t)[1].float().permute(0, 2, 3, 1).cpu().numpy())
        m = np.clip(np.concatenate(outs, 0), 0.0, 1.0)
        m[m < 0.1] = 0.0
        return m[0] if single else m
