"""`torchsae import-dfl DFL_MODEL_DIR --out CHECKPOINT [--name NAME] [--archi ... --resolution ...]`.

Reads a DFL SAEHD model (``<name>_SAEHD_data.dat`` + part files, or bare ``<part>.npy`` files with the
network options given on the command line), checks every weight, and writes a single-file TorchSAE
checkpoint (``engine.train.checkpoint.save_model_file``: model weights + the resolved recipe, at DFL's
iteration). When the folder has DFL's optimizer file (``<name>_SAEHD_src_dst_opt.npy``) its state is
checked and stored too, and so are the code / GAN discriminators (``code_discriminator.npy``, ``GAN.npy``
and their ``D_code_opt.npy`` / ``GAN_opt.npy``) where present. The resolved recipe is written beside the
checkpoint (``<out stem>.toml``, kept if it exists) so that, with its [data] paths set,
`torchsae train <stem>.toml --resume <out>` continues where DFL stopped.
"""

from __future__ import annotations

import argparse
import logging

from engine.dfl.convert import import_dfl_training_state, import_model
from engine.fileio import write_atomic
from engine.recipe import dumps
from engine.train.checkpoint import save_model_file

log = logging.getLogger("torchsae.dfl")

# command-line flag -> DFL option name
_OPTION_FLAGS = {
    "archi": str, "resolution": int, "face_type": str, "ae_dims": int, "e_dims": int, "d_dims": int,
    "d_mask_dims": int,
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model_dir", help="DFL models folder (or a <name>_SAEHD_data.dat file)")
    p.add_argument("--name", help="model name when the folder holds several (the part before _SAEHD_)")
    p.add_argument("--out", required=True, help="checkpoint file to write (e.g. runs/imported/model.pt)")
    g = p.add_argument_group("network options (override data.dat; required without it)")
    for opt, typ in _OPTION_FLAGS.items():
        g.add_argument("--" + opt.replace("_", "-"), dest=opt, type=typ, default=None)


def run(args: argparse.Namespace) -> int:
    options = {k: getattr(args, k) for k in _OPTION_FLAGS if getattr(args, k) is not None}
    recipe, model = import_model(args.model_dir, name=args.name, options=options or None)
    st = import_dfl_training_state(args.model_dir, model, recipe, name=args.name)
    it, opt = st.pop("iter"), st["dfl_optimizer"]
    path = save_model_file(args.out, model, dumps(recipe), step=it, extra={k: v for k, v in st.items() if v})
    total = sum(p.numel() for p in model.parameters())
    state = f"{opt['name']} state, iters {opt['iterations']}" if opt else "no optimizer state"
    for attr, label in (("dfl_code_d", "code discriminator"), ("dfl_gan_d", "GAN discriminator")):
        if attr in st:
            state += f"; {label}{' + optimizer state' if st[attr]['optimizer'] else ''}"
    print(f"{path}: imported DFL {recipe.model.archi} @ {recipe.model.resolution} "
          f"({', '.join(model.parts())}; {total:,} parameters; iter {it}; {state})")
    rpath = path.with_suffix(".toml")
    if rpath.exists():
        print(f"{rpath}: exists, kept (the imported recipe is also inside {path.name})")
    else:
        write_atomic(rpath, dumps(recipe), durable=True)
        print(f"{rpath}: the model's recipe; set [data] src/dst, then: torchsae train {rpath} --resume {path}")
    return 0
