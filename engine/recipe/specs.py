"""Frozen, typed specs: what a recipe *means*, one class per consumer.

A recipe is TOML with the tables below; each becomes one spec and each consumer receives only its own
(the graph builder gets `ModelSpec`, the loss gets `LossSpec`, ...). Field metadata carries the schema
(type, choices, range, help) that `engine.recipe.load` validates against, so the schema lives in one
place. DFL's option names and defaults (docs/dfl.md §1) are kept wherever an option exists in DFL.

This module imports no torch: `torchsae validate` is instant.
"""

from __future__ import annotations

from typing import Any

import attrs

from engine.recipe.graph_spec import GraphSpec

# ---------------------------------------------------------------------------------------------------------
# Field helper: attrs field + schema metadata


def opt(default: Any, *, type: type | tuple, help: str, choices: tuple | None = None, min: float | None = None,
        max: float | None = None, even: bool = False, dfl: str | None = None, list_of: type | None = None,
        auto: bool = False):
    """An attrs field carrying its schema: python type, allowed choices, numeric range, DFL option name.

    auto: the string "auto" is also valid (the consumer resolves it for the machine and logs how)."""
    meta = {"type": type, "help": help, "choices": choices, "min": min, "max": max, "even": even, "dfl": dfl,
            "list_of": list_of, "auto": auto}
    if isinstance(default, dict):  # frozen specs still need a fresh dict per instance
        return attrs.field(factory=dict, metadata=meta)
    return attrs.field(default=default, metadata=meta)


FACE_TYPES = ("h", "mf", "f", "wf", "head")
CT_MODES = ("none", "rct", "lct", "mkl", "idt", "sot")
ARCHI_TYPES = ("df", "liae")
ARCHI_OPTS = "udtc"
TV_MODES = ("dfl_gpu", "spatial")  # engine.losses.ops.total_variation_mse
DISTILL_MODES = ("mse", "cosine")  # engine.losses.distill.latent_distill


@attrs.frozen(kw_only=True)
class DataSpec:
    """[data]: facesets and DFL's augmentation (docs/dfl.md §5). Paths are relative to the working directory."""

    src: str = opt("workspace/demo/data_src/aligned", type=str, help="src faceset: DFL aligned folder or plain folder")
    dst: str = opt("workspace/demo/data_dst/aligned", type=str, help="dst faceset: DFL aligned folder or plain folder")
    plain_face_type: str = opt("wf", type=str, choices=FACE_TYPES,
                               help="face type of plain folders (<name>_landmarks.npy beside each image)")
    pretrain_faceset: str = opt("", type=str, help="faceset used in pretrain mode (DFL pretraining_data_path)")
    random_warp: bool = opt(True, type=bool, help="DFL random warp of the network input", dfl="random_warp")
    random_src_flip: bool = opt(False, type=bool, help="random horizontal flip of src samples", dfl="random_src_flip")
    random_dst_flip: bool = opt(True, type=bool, help="random horizontal flip of dst samples", dfl="random_dst_flip")
    random_hsv_power: float = opt(0.0, type=float, min=0.0, max=0.3, help="random HSV shift of the src input",
                                  dfl="random_hsv_power")
    ct_mode: str = opt("none", type=str, choices=CT_MODES, help="colour transfer of src samples to random dst",
                       dfl="ct_mode")
    uniform_yaw: bool = opt(False, type=bool, help="sample faces uniformly over yaw (both sides, as DFL)",
                            dfl="uniform_yaw")
    pipeline: str = opt("auto", type=str, choices=("auto", "device", "fast", "dfl"),
                        help="device: loader processes decode, the training device augments (auto's choice); "
                             "fast: batched augmentation in loader processes; dfl: DFL's per-sample numpy/cv2 "
                             "path (oracle)")
    workers: int | str = opt("auto", type=int, min=0, max=64, auto=True,
                             help="loader worker processes (0 = in the training process; auto = usable cores "
                                  "per training process minus one, 0 on CPU training with <= 2 cores)")
    identities: dict = opt({}, type=dict, list_of=str,
                           help="explicit graphs: faceset of each identity beyond src/dst ({name = folder})")
    eval_fraction: float = opt(0.0, type=float, min=0.0, max=0.5,
                               help="faces of src and dst held out of training for `torchsae eval` and "
                                    "[train].eval_every (contiguous runs in name order, evenly spread; "
                                    "0 = train on every face, as DFL)")
    eval_block: int = opt(8, type=int, min=1, max=100000,
                          help="longest run of consecutive held-out faces (neighbouring frames are near "
                               "duplicates: a run keeps them out of training together)")
    eval_src: str = opt("", type=str, help="folder of held-out src faces (never trained on); replaces "
                                           "eval_fraction for src")
    eval_dst: str = opt("", type=str, help="folder of held-out dst faces (never trained on); replaces "
                                           "eval_fraction for dst")


@attrs.frozen(kw_only=True)
class ModelSpec:
    """[model]: a DFL archi preset (docs/dfl.md §2) or an explicit [graph]."""

    archi: str = opt("liae-ud", type=str, help="'<df|liae>[-<opts>]', opts from u, d, t, c", dfl="archi")
    resolution: int = opt(128, type=int, min=64, max=640, help="face resolution (multiple of 16; of 32 with -d)",
                          dfl="resolution")
    face_type: str = opt("f", type=str, choices=FACE_TYPES, help="model face type", dfl="face_type")
    ae_dims: int = opt(256, type=int, min=1, max=4096, help="bottleneck width", dfl="ae_dims")
    e_dims: int = opt(64, type=int, min=2, max=1024, even=True, help="encoder base channels", dfl="e_dims")
    d_dims: int = opt(64, type=int, min=2, max=1024, even=True, help="decoder base channels", dfl="d_dims")
    d_mask_dims: int = opt(22, type=int, min=2, max=1024, even=True, help="mask decoder base channels",
                           dfl="d_mask_dims")
    graph: GraphSpec | None = attrs.field(default=None, metadata={"type": "graph", "help": "explicit [graph] table"})

    @property
    def archi_type(self) -> str:
        return self.archi.split("-")[0]


@attrs.frozen(kw_only=True)
class LossSpec:
    """[loss]: SAEHD's terms (docs/dfl.md §3.4) with DFL's weights as defaults, plus TorchSAE's latent distillation.

    The consumer is engine.losses.saehd (`saehd_losses(outputs, batch, spec, runtime)`), which reads these
    fields directly; what the loss needs from elsewhere (the resolution R, pretrain mode, the kernel choice)
    comes in its `LossRuntime`. Derived values (DSSIM windows, blur sigmas) are computed from R there.
    Every float here is a weight or power a [[schedule.ramp]] may name.
    """

    masked_training: bool = opt(True, type=bool, help="losses inside the blurred face mask", dfl="masked_training")
    eyes_mouth_prio: bool = opt(False, type=bool, help="300x L1 on eyes and mouth", dfl="eyes_mouth_prio")
    blur_out_mask: bool = opt(False, type=bool, help="blur the background next to the face", dfl="blur_out_mask")
    dssim_weight: float = opt(10.0, type=float, min=0.0, help="structural term weight (split 5+5 from res 256)")
    mse_weight: float = opt(10.0, type=float, min=0.0, help="pixel MSE weight")
    eyes_mouth_weight: float = opt(300.0, type=float, min=0.0, help="eyes/mouth L1 weight (with eyes_mouth_prio)")
    mask_weight: float = opt(10.0, type=float, min=0.0, help="mask MSE weight")
    face_style_power: float = opt(0.0, type=float, min=0.0, max=100.0, help="face style power (DFL %)",
                                  dfl="face_style_power")
    face_style_weight: float = opt(10000.0, type=float, min=0.0,
                                   help="face style weight; the term is weighted face_style_weight * power / 100")
    bg_style_power: float = opt(0.0, type=float, min=0.0, max=100.0, help="background style power (DFL %)",
                                dfl="bg_style_power")
    bg_style_weight: float = opt(10.0, type=float, min=0.0,
                                 help="background style weight (DSSIM and MSE terms: bg_style_weight * power / 100)")
    true_face_power: float = opt(0.0, type=float, min=0.0, max=1.0, help="true-face code discriminator (df only)",
                                 dfl="true_face_power")
    true_face_in_pretrain: bool = opt(True, type=bool,
                                      help="keep the true-face generator term in pretrain (DFL does, docs/dfl.md §12.10)")
    gan_power: float = opt(0.0, type=float, min=0.0, max=5.0, help="GAN power", dfl="gan_power")
    gan_patch_size: int = opt(0, type=int, min=0, max=640, help="GAN patch size (0 = resolution // 8)",
                              dfl="gan_patch_size")
    gan_dims: int = opt(16, type=int, min=4, max=512, help="GAN discriminator base channels", dfl="gan_dims")
    gan_tv_weight: float = opt(1e-6, type=float, min=0.0, help="total-variation weight under GAN + masked training")
    gan_bg_weight: float = opt(0.02, type=float, min=0.0,
                               help="background MSE weight under GAN + masked training (DFL's anti-dot term)")
    tv_mode: str = opt("dfl_gpu", type=str, choices=TV_MODES,
                       help="GAN TV differences: dfl_gpu (channel and H: DFL on a GPU, NCHW) or spatial (H and W: "
                            "DFL's CPU path, NHWC)")
    latent_distill_weight: float = opt(0.0, type=float, min=0.0, help="pull the latent towards a teacher's")
    latent_distill_teacher: str = opt("", type=str, help="teacher checkpoint for latent distillation")
    latent_distill_mode: str = opt("mse", type=str, choices=DISTILL_MODES, help="latent distance")


@attrs.frozen(kw_only=True)
class RampSpec:
    """One loss-weight ramp: `term` goes linearly from `start_value` at `start` to `end_value` at `end`."""

    term: str = opt("gan_power", type=str, help="a [loss] weight or power")
    start: int = opt(0, type=int, min=0, help="step where the ramp begins")
    end: int = opt(0, type=int, min=0, help="step where it reaches end_value (== start: a switch)")
    start_value: float = opt(0.0, type=float, help="value up to `start`")
    end_value: float = opt(0.0, type=float, help="value from `end` on")


@attrs.frozen(kw_only=True)
class ScheduleSpec:
    """[schedule]: learning rate, loss-weight ramps, random warp off, pretrain switch."""

    lr: str = opt("constant", type=str, choices=("constant", "warmup", "cosine"), help="learning-rate schedule")
    warmup_steps: int = opt(0, type=int, min=0, help="linear warm-up steps (warmup, cosine)")
    decay_steps: int = opt(0, type=int, min=0, help="cosine decay length after warm-up (0 = train.target_iter)")
    min_lr_ratio: float = opt(0.0, type=float, min=0.0, max=1.0, help="cosine floor as a fraction of optim.lr")
    random_warp_off_at: int = opt(0, type=int, min=0, help="turn random warp off from this step (0 = never)")
    pretrain_until: int = opt(0, type=int, min=0,
                              help="train in pretrain mode until this step, then switch (DFL re-init rules)")
    ramp: tuple = opt((), type=tuple, list_of=RampSpec, help="loss-weight ramps ([[schedule.ramp]] tables)")


@attrs.frozen(kw_only=True)
class OptimSpec:
    """[optim]: DFL's optimizers (docs/dfl.md §3.6) and the usual torch ones."""

    name: str = opt("adabelief", type=str, choices=("adabelief", "rmsprop", "adam", "adamw"),
                    help="optimizer (DFL: adabelief, or rmsprop when adabelief is off)", dfl="adabelief")
    lr: float = opt(5e-5, type=float, min=0.0, help="learning rate")
    lr_dropout: str = opt("n", type=str, choices=("n", "y", "cpu"), help="DFL lr dropout (0.3, with 500-step cosine)",
                          dfl="lr_dropout")
    clipgrad: bool = opt(False, type=bool, help="clip the global gradient norm to 1.0", dfl="clipgrad")
    betas: tuple = opt((0.9, 0.999), type=tuple, list_of=float, help="adam/adamw betas")
    weight_decay: float = opt(0.0, type=float, min=0.0, help="adamw weight decay")


@attrs.frozen(kw_only=True)
class TrainSpec:
    """[train]: the loop, checkpoints, previews."""

    run_dir: str = opt("", type=str, help="run folder (default runs/<recipe name>)")
    batch_size: int = opt(4, type=int, min=1, max=4096, help="batch size (split across DDP ranks)",
                          dfl="batch_size")
    target_iter: int = opt(0, type=int, min=0, help="stop at this step (0 = until interrupted)", dfl="target_iter")
    seed: int = opt(0, type=int, min=0, help="seed for weights, sampling and augmentation")
    deterministic: bool = opt(False, type=bool, help="deterministic algorithms (slower)")
    device: str = opt("auto", type=str, choices=("auto", "cpu", "cuda"), help="training device")
    threads: int = opt(0, type=int, min=0, max=1024,
                       help="CPU intra-op threads (0 = torch's default); use 1 on a CPU shared with other jobs")
    amp: str = opt("off", type=str, choices=("off", "bf16", "fp16"), help="autocast dtype (DSSIM stays fp32)")
    pretrain: bool = opt(False, type=bool, help="DFL pretrain mode", dfl="pretrain")
    save_every_steps: int = opt(0, type=int, min=0, help="autosave every N steps (0 = off)")
    save_every_minutes: float = opt(25.0, type=float, min=0.0, help="autosave every N minutes (DFL: 25)")
    keep_last: int = opt(3, type=int, min=1, help="checkpoints kept")
    backup_every_hours: float = opt(0.0, type=float, min=0.0, max=24.0, help="DFL autobackup period (0 = off)",
                                    dfl="autobackup_hour")
    preview_every: int = opt(0, type=int, min=0, help="preview every N steps (0 = DFL's 10*max(1, R//64))")
    keep_previews: int = opt(0, type=int, min=0,
                             help="preview images kept in logs/previews, newest first (0 = all: DFL's preview history)")
    log_every: int = opt(10, type=int, min=1, help="TensorBoard scalars every N steps")
    max_bad_steps: int = opt(3, type=int, min=1, help="consecutive non-finite steps before rolling back")
    lr_backoff: float = opt(0.5, type=float, min=0.0, max=1.0, help="lr factor applied on a rollback")
    max_rollbacks: int = opt(5, type=int, min=1,
                             help="rollbacks in a row that never get past the step where training diverged "
                                  "before the run stops with an error")
    freeze: tuple = opt((), type=tuple, list_of=str, help="model parts (node names) kept frozen, e.g. ['decoder_A']")
    init_parts: dict = opt({}, type=dict, list_of=str,
                           help="start parts from another checkpoint: {part = 'ckpt'} or {part = 'ckpt::other_part'}")
    eval_every: int = opt(0, type=int, min=0,
                          help="evaluate swap quality on the held-out faces every N steps (0 = off); metrics "
                               "to TensorBoard (eval/*) and <run>/logs/eval.jsonl")
    eval_faces: int = opt(64, type=int, min=1, help="at most this many held-out faces per side in each "
                                                    "evaluation during training (spread evenly)")


@attrs.frozen(kw_only=True)
class ExportSpec:
    """[export]: ONNX / DFM export (docs/dfl.md §9)."""

    format: str = opt("dfm", type=str, choices=("onnx", "dfm"), help="default export format")
    opset: int = opt(17, type=int, min=11, max=23, help="ONNX opset (DFM always uses 12)")
    fp16: bool = opt(False, type=bool, help="export float16 weights")
    simplify: bool = opt(True, type=bool, help="simplify with onnxsim (fallback onnxslim)")


@attrs.frozen(kw_only=True)
class CompileSpec:
    """[compile]: torch.compile and kernel choice."""

    mode: str = opt("off", type=str, choices=("off", "default", "reduce-overhead", "max-autotune"),
                    help="torch.compile mode of the model's forward/backward (reduce-overhead: + CUDA graphs, for "
                         "small batches on GPUs; without CUDA it runs eagerly, logged)")
    kernels: str = opt("auto", type=str, choices=("auto", "reference", "fast", "cpu", "triton", "batched"),
                       help="DSSIM / warp / optimizer-update implementation (kernels/README.md; auto logs its "
                            "choice, an explicit one that cannot run is an error)")
    channels_last: bool = opt(True, type=bool,
                              help="channels_last memory format (faster convolutions on CPU oneDNN and GPU cuDNN)")


MERGE_MODES = ("original", "overlay", "hist-match", "seamless", "seamless-hist-match", "raw-rgb", "raw-predict")
MASK_MODES = ("full", "dst", "learned-prd", "learned-dst", "learned-prd*learned-dst", "learned-prd+learned-dst",
              "XSeg-prd", "XSeg-dst", "XSeg-prd*XSeg-dst", "learned-prd*learned-dst*XSeg-prd*XSeg-dst")
MERGE_CT = ("none", "rct", "lct", "mkl", "mkl-m", "idt", "idt-m", "sot-m", "mix-m")


@attrs.frozen(kw_only=True)
class MergeSpec:
    """[merge]: DFL's MergerConfigMasked options (docs/dfl.md §10.3 defaults)."""

    mode: str = opt("overlay", type=str, choices=MERGE_MODES, help="blend mode")
    mask_mode: str = opt("learned-prd*learned-dst", type=str, choices=MASK_MODES, help="mask source")
    erode: int = opt(0, type=int, min=-400, max=400, help="erode (+) / dilate (-) the mask, px at 4x resolution")
    blur: int = opt(0, type=int, min=0, max=400, help="mask blur, px at 4x resolution")
    motion_blur_power: int = opt(0, type=int, min=0, max=100, help="motion blur power")
    output_face_scale: int = opt(0, type=int, min=-50, max=50, help="output face scale (%)")
    color_transfer: str = opt("rct", type=str, choices=MERGE_CT, help="colour transfer of the swapped face")
    sharpen_mode: str = opt("none", type=str, choices=("none", "box", "gaussian"), help="blur/sharpen kernel")
    blursharpen_amount: int = opt(0, type=int, min=-100, max=100, help="blur (-) / sharpen (+) amount")
    super_resolution_power: int = opt(0, type=int, min=0, max=0,
                                      help="face enhancer power (not available: needs DFL's FaceEnhancer weights)")
    image_denoise_power: int = opt(0, type=int, min=0, max=500, help="frame denoise power")
    bicubic_degrade_power: int = opt(0, type=int, min=0, max=100, help="bicubic degrade power")
    color_degrade_power: int = opt(0, type=int, min=0, max=100, help="colour degrade power")
    masked_hist_match: bool = opt(True, type=bool, help="hist-match inside the mask only")
    hist_match_threshold: int = opt(238, type=int, min=0, max=255, help="hist-match threshold")
    workers: int = opt(2, type=int, min=0, max=64, help="merge worker processes")


XSEG_FACE_TYPES = ("h", "mf", "f", "wf", "head")


@attrs.frozen(kw_only=True)
class XSegSpec:
    """[xseg]: DFL's XSeg segmentation model (docs/dfl.md §5.7, §7), trained by `torchsae xseg train` from an XSeg
    recipe (`kind = "xseg"`: tables [xseg] and [train] only). DFL's options keep their names and defaults."""

    facesets: tuple = opt(("workspace/demo/data_src/aligned", "workspace/demo/data_dst/aligned"), type=tuple,
                          list_of=str, help="labelled facesets (DFL trains on data_src/aligned and data_dst/aligned)")
    face_type: str = opt("wf", type=str, choices=XSEG_FACE_TYPES, help="XSeg face type (DFL option face_type)")
    resolution: int = opt(256, type=int, min=64, max=1024, help="network resolution (DFL fixes 256; multiple of 64)")
    base_ch: int = opt(32, type=int, min=1, max=256, help="network width (DFL 32; smaller only for tests)")
    pretrain: bool = opt(False, type=bool, help="DFL pretrain: reconstruct grayscale faces, skips zeroed (DFL option "
                         "pretrain)")
    pretrain_faceset: str = opt("", type=str, help="faceset used in pretrain mode (DFL pretraining_data_path)")
    lr: float = opt(1e-4, type=float, min=0.0, help="RMSprop learning rate (DFL 1e-4)")
    lr_dropout: float = opt(0.3, type=float, min=0.01, max=1.0,
                            help="probability that a weight element is updated in a step (DFL 0.3; 1.0 = off)")
    augment: bool = opt(True, type=bool, help="DFL's XSeg augmentation (backgrounds, warp, flares, colour, blur, jpeg)")
    init_from: str = opt("", type=str,
                         help="start from DFL's XSeg model (folder with XSeg_256.npy) or a TorchSAE XSeg checkpoint")
    workers: int = opt(2, type=int, min=0, max=64, help="loader worker processes (0 = in the main process)")
    pipeline: str = opt("auto", type=str, choices=("auto", "device", "dfl"),
                        help="device: loader processes decode once, the training device augments the batch "
                             "(auto's choice); dfl: DFL's per-sample numpy/cv2 augmentation in the loader "
                             "processes (the oracle)")


# [train] keys an XSeg recipe may set (the loop, checkpoints, previews); the others are SAEHD's
XSEG_TRAIN_KEYS = ("run_dir", "batch_size", "target_iter", "seed", "deterministic", "device", "threads",
                   "save_every_steps", "save_every_minutes", "keep_last", "backup_every_hours", "preview_every",
                   "keep_previews", "log_every", "max_bad_steps")
RECIPE_KINDS = ("saehd", "xseg")
# tables of each recipe kind (SAEHD recipes may also hold [graph])
KIND_TABLES = {"saehd": ("data", "model", "loss", "schedule", "optim", "train", "export", "compile", "merge"),
               "xseg": ("xseg", "train")}


# table name -> spec class, in the order recipes are written and dumped
TABLES: dict[str, type] = {
    "data": DataSpec,
    "model": ModelSpec,
    "loss": LossSpec,
    "schedule": ScheduleSpec,
    "optim": OptimSpec,
    "train": TrainSpec,
    "export": ExportSpec,
    "compile": CompileSpec,
    "merge": MergeSpec,
    "xseg": XSegSpec,
}


# `torchsae train` flags that are shorthands for recipe keys (flag dest -> table.key; `describe` lists them)
TRAIN_FLAGS: dict[str, str] = {
    "src": "data.src",
    "dst": "data.dst",
    "resolution": "model.resolution",
    "batch_size": "train.batch_size",
    "steps": "train.target_iter",
    "preview_every": "train.preview_every",
    "run_dir": "train.run_dir",
    "amp": "train.amp",
    "compile": "compile.mode",
    "device": "train.device",
}


@attrs.frozen(kw_only=True)
class Recipe:
    """A whole, resolved recipe. `source` is the file it came from (for messages), `name` its stem; `kind`
    says what it trains: "saehd" (the default) or "xseg" (top-level `kind = "xseg"`, tables [xseg] and
    [train])."""

    name: str = "recipe"
    source: str | None = None
    kind: str = "saehd"
    data: DataSpec = attrs.field(factory=DataSpec)
    model: ModelSpec = attrs.field(factory=ModelSpec)
    loss: LossSpec = attrs.field(factory=LossSpec)
    schedule: ScheduleSpec = attrs.field(factory=ScheduleSpec)
    optim: OptimSpec = attrs.field(factory=OptimSpec)
    train: TrainSpec = attrs.field(factory=TrainSpec)
    export: ExportSpec = attrs.field(factory=ExportSpec)
    compile: CompileSpec = attrs.field(factory=CompileSpec)
    merge: MergeSpec = attrs.field(factory=MergeSpec)
    xseg: XSegSpec = attrs.field(factory=XSegSpec)
