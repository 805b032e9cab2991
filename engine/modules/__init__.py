"""NCHW building blocks of DFL's DeepFakeArchi (docs/dfl.md §2) plus TorchSAE's latent adapter.

Submodule and parameter names mirror DFL's variable scopes (docs/dfl.md §2.8), so importing DFL weights is a
key map (engine.dfl.keymap): ``encoder.down1.downs_0.conv1.weight`` <-> ``encoder/down1/downs_0/conv1/weight:0``.
Discriminators live in engine/modules/discriminators.py.
"""

from engine.modules.adapter import ADAPTER_KINDS, Adapter
from engine.modules.autoencoder import OPT_LETTERS, Decoder, Encoder, Inter, check_opts
from engine.modules.blocks import Downscale, DownscaleBlock, ResidualBlock, Upscale
from engine.modules.layers import Act, XCos, conv2d, dense, depth_to_space, dfl_same_padding, glorot_init_, pixel_norm

__all__ = [
    "Act", "XCos", "conv2d", "dense", "depth_to_space", "dfl_same_padding", "glorot_init_", "pixel_norm",
    "Downscale", "DownscaleBlock", "ResidualBlock", "Upscale",
    "OPT_LETTERS", "check_opts", "Encoder", "Inter", "Decoder",
    "ADAPTER_KINDS", "Adapter",
]
