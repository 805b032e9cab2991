"""DFL's training state travels both ways: `import-dfl` carries the optimizer file
(``<name>_SAEHD_src_dst_opt.npy``, docs/dfl.md §8.2), the discriminators and the iteration into training (the
moments land on the right parameters in torch layout, the counter continues, the first step uses them),
and `export-dfl` writes a trained checkpoint back as a DFL model folder that imports to the same state."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from engine import recipe as recipe_mod
from engine.dfl import export_dfl_model, part_path, read_part_file
from engine.dfl.keymap import dfl_to_torch_array, dfl_to_torch_name, torch_to_dfl_array
from engine.errors import CheckpointError
from engine.graph import build
from engine.recipe.specs import ModelSpec
from engine.train.checkpoint import load_model_payload
from engine.train.build import build_trainer

TINY = dict(resolution=64, ae_dims=16, e_dims=4, d_dims=4, d_mask_dims=4)
ITERS = 1234


def _dfl_model(folder, archi, adabelief, *, iters=ITERS, drop_key=False):
    """A DFL model folder with an optimizer file built from the part files' own keys (not from our
    exporter): slot arrays of random values in TF layout, 'iters:0' as the numpy scalar TF returns.
    Returns {(torch name, slot): expected torch-layout array}."""
    torch.manual_seed(0)
    model = build(ModelSpec(archi=archi, **TINY))
    export_dfl_model(model, folder, "m", options={"archi": archi, **TINY, "adabelief": adabelief}, iter=iters)
    rng = np.random.default_rng(1)
    data = {"iters:0": np.int64(iters)}
    expected = {}
    for part in model.parts():
        for key, arr in read_part_file(part_path(folder, part, "m")).items():
            for slot in (("ms", "vs") if adabelief else ("acc",)):
                v = rng.random(arr.shape, dtype=np.float32) + 0.5
                data[f"{slot}_{part}/{key.replace(':', '_')}:0"] = v
                expected[(dfl_to_torch_name(part, key), slot)] = dfl_to_torch_array(v)
    if drop_key:
        data.pop(sorted(k for k in data if k.startswith(("ms_", "acc_")))[0])
    part_path(folder, "src_dst_opt", "m").write_bytes(pickle.dumps(data, protocol=4))
    return expected


def _weight_file(module) -> dict[str, np.ndarray]:
    """A discriminator's DFL weight file: {'convs_0/weight:0': TF-layout array} (scope stripped, docs/dfl.md §8.2)."""
    return {n.replace(".", "/") + ":0": torch_to_dfl_array(p.detach().numpy()) for n, p in module.named_parameters()}


def _add_discriminators(folder):
    """Turn the model in `folder` (made by _dfl_model) into one trained with true_face_power and GAN: options,
    code_discriminator.npy / GAN.npy (weight-file keys, scope stripped) and D_code_opt.npy / GAN_opt.npy (full
    variable names), iters 77. Returns ({attr: module}, {(attr, torch name): expected ms in torch layout})."""
    from engine.modules import discriminators as D

    data = pickle.loads((folder / "m_SAEHD_data.dat").read_bytes())
    data["options"].update(true_face_power=0.1, gan_power=0.1, gan_patch_size=8, gan_dims=8)
    (folder / "m_SAEHD_data.dat").write_bytes(pickle.dumps(data))
    torch.manual_seed(5)
    model = build(ModelSpec(archi="df-ud", **TINY))
    mods = {"code_d": D.code_discriminator_for(model, TINY["ae_dims"]), "gan_d": D.gan_discriminator_for(64, 8, 8)}
    files = {"code_d": ("code_discriminator", "D_code_opt", "dis"), "gan_d": ("GAN", "GAN_opt", "D_src")}
    rng = np.random.default_rng(2)
    want_ms = {}
    for attr, mod in mods.items():
        wfile, ofile, scope = files[attr]
        part_path(folder, wfile, "m").write_bytes(pickle.dumps(_weight_file(mod), protocol=4))
        opt = {"iters:0": np.int64(77)}
        for tname, p in mod.named_parameters():
            dname = f"{scope}/{tname.replace('.', '/')}:0"
            shape = torch_to_dfl_array(p.detach().numpy()).shape
            for slot in ("ms", "vs"):
                v = rng.random(shape, dtype=np.float32)
                opt[f"{slot}_{dname.replace(':', '_')}:0"] = v
                if slot == "ms":
                    want_ms[(attr, tname)] = dfl_to_torch_array(v)
        part_path(folder, ofile, "m").write_bytes(pickle.dumps(opt, protocol=4))
    return mods, want_ms


def _import(tmp_path, capsys, *args):
    from engine.__main__ import main

    out = tmp_path / "ck" / "model.pt"
    rc = main(["import-dfl", str(tmp_path / "dfl"), "--out", str(out), *args])
    return rc, out, capsys.readouterr()


@pytest.mark.parametrize("archi,adabelief", [("df-ud", True), ("liae-ud", False)])
def test_import_carries_optimizer_state_and_iteration(tmp_path, capsys, archi, adabelief):
    expected = _dfl_model(tmp_path / "dfl", archi, adabelief)
    rc, out, io = _import(tmp_path, capsys)
    assert rc == 0, io.err
    assert f"iter {ITERS}; {'adabelief' if adabelief else 'rmsprop'} state, iters {ITERS}" in io.out
    payload = load_model_payload(out)
    assert payload["step"] == ITERS
    opt = payload["dfl_optimizer"]
    assert opt["name"] == ("adabelief" if adabelief else "rmsprop") and opt["iterations"] == ITERS
    got = {(n, s): t for n, slots in opt["state"].items() for s, t in slots.items()}
    assert set(got) == set(expected)
    for k, want in expected.items():
        assert torch.equal(got[k], torch.from_numpy(want)), k


def _trainer(out, tmp_path, run, *overrides):
    payload = load_model_payload(out)
    r = recipe_mod.loads(payload["recipe_toml"], source="imported",
                         overrides=[f"train.run_dir='{tmp_path / run}'", "train.batch_size=2", "compile.mode='off'",
                                    "train.amp='off'", *overrides])
    return build_trainer(r)


def test_training_continues_with_dfl_moments(tmp_path, capsys):
    """Same weights, same batch: the step after loading DFL's state differs from a fresh-state step by
    exactly β1·ms_dfl in the first moment (ms ← β1·ms + (1−β1)·g), and the counter goes on from DFL's."""
    from bench.train.common import synthetic_batch

    expected = _dfl_model(tmp_path / "dfl", "df-ud", True)
    rc, out, io = _import(tmp_path, capsys)
    assert rc == 0, io.err
    loaded, fresh = _trainer(out, tmp_path, "a"), _trainer(out, tmp_path, "b")
    loaded.load(out)
    fresh.load(out)
    fresh.g_opt.opt.state.clear()  # what an import without the optimizer file gives
    fresh.g_opt.opt.iterations = 0
    assert loaded.step == ITERS and loaded.g_opt.opt.iterations == ITERS
    name = "encoder.down1.downs_0.conv1.weight"
    p = dict(loaded.model.named_parameters())[name]
    assert torch.equal(loaded.g_opt.opt.state[p]["ms"], torch.from_numpy(expected[(name, "ms")]))
    batch = synthetic_batch(2, 64)
    loaded.train_one(batch)
    fresh.train_one(batch)
    assert loaded.step == ITERS + 1 and loaded.g_opt.opt.iterations == ITERS + 1
    pf = dict(fresh.model.named_parameters())[name]
    diff = loaded.g_opt.opt.state[p]["ms"] - fresh.g_opt.opt.state[pf]["ms"]
    torch.testing.assert_close(diff, 0.9 * torch.from_numpy(expected[(name, "ms")]), rtol=1e-5, atol=1e-6)


def test_recipe_with_another_optimizer_starts_fresh(tmp_path, capsys, caplog):
    _dfl_model(tmp_path / "dfl", "df-ud", True)
    rc, out, io = _import(tmp_path, capsys)
    assert rc == 0, io.err
    t = _trainer(out, tmp_path, "c", "optim.name='rmsprop'")
    with caplog.at_level("WARNING", logger="torchsae.train"):
        t.load(out)
    assert "holds DFL adabelief optimizer state but the recipe uses optim.name = 'rmsprop'" in caplog.text
    assert len(t.g_opt.opt.state) == 0 and t.step == ITERS


def test_bad_optimizer_files_are_refused_by_name(tmp_path, capsys):
    _dfl_model(tmp_path / "dfl", "df-ud", True, drop_key=True)
    rc, _, io = _import(tmp_path, capsys)
    assert rc == 2 and "m_SAEHD_src_dst_opt.npy: missing key 'ms_decoder_dst/" in io.err
    # the options say rmsprop (adabelief off) but the file holds AdaBelief slots
    _dfl_model(tmp_path / "dfl", "df-ud", True)
    data = pickle.loads((tmp_path / "dfl" / "m_SAEHD_data.dat").read_bytes())
    data["options"]["adabelief"] = False
    (tmp_path / "dfl" / "m_SAEHD_data.dat").write_bytes(pickle.dumps(data))
    rc, _, io = _import(tmp_path, capsys)
    assert rc == 2 and "holds AdaBelief state, but the model's options say optimizer 'rmsprop'" in io.err
    # an optimizer file is a pickle like the others: no code runs
    (tmp_path / "dfl" / "m_SAEHD_src_dst_opt.npy").write_bytes(
        b"\x80\x04cos\nsystem\n(S'echo pwned'\ntR.")
    rc, _, io = _import(tmp_path, capsys)
    assert rc == 2 and "m_SAEHD_src_dst_opt.npy" in io.err and "pwned" not in io.out


def test_import_without_optimizer_file_keeps_fresh_state(tmp_path, capsys):
    _dfl_model(tmp_path / "dfl", "df-ud", True)
    (tmp_path / "dfl" / "m_SAEHD_src_dst_opt.npy").unlink()
    rc, out, io = _import(tmp_path, capsys)
    assert rc == 0 and "no optimizer state" in io.out
    payload = load_model_payload(out)
    assert payload["step"] == ITERS and "dfl_optimizer" not in payload


def test_cli_import_then_train_resume_continues_dfl_run(tmp_path, capsys):
    """The user's path: import-dfl writes model.pt + model.toml; `train model.toml --resume model.pt`
    runs from DFL's iteration with DFL's moments and saves a checkpoint that carries them on."""
    from engine.__main__ import main
    from synthetic_faces import write_synthetic_faceset
    from engine.train import checkpoint as ck

    _dfl_model(tmp_path / "dfl", "df-ud", True)
    rc, out, io = _import(tmp_path, capsys)
    assert rc == 0, io.err
    toml = out.with_suffix(".toml")
    assert f"torchsae train {toml} --resume {out}" in io.out
    for side, seed in (("A", 1), ("B", 2)):
        write_synthetic_faceset(tmp_path / side, 4, size=128, face_type="wf", seed=seed)
    run = tmp_path / "run"
    rc = main(["train", str(toml), f"data.src='{tmp_path / 'A'}'", f"data.dst='{tmp_path / 'B'}'", "data.workers=0",
               "train.batch_size=2", f"train.run_dir='{run}'", "--resume", str(out), "--max-steps", "1",
               "--no-progress"])
    assert rc == 0
    latest = ck.resolve_latest(run)
    assert latest.name == f"step_{ITERS + 1:08d}"
    state = ck.load_train_state(latest)
    assert state["step"] == ITERS + 1 and state["g_opt"]["dfl"]["iterations"] == ITERS + 1
    # a second import into the same place keeps the (possibly edited) recipe
    rc, _, io = _import(tmp_path, capsys)
    assert rc == 0 and f"{toml}: exists, kept" in io.out


def test_discriminators_and_their_optimizers_are_imported(tmp_path, capsys):
    """A DFL model trained with true_face_power and GAN: code_discriminator.npy / GAN.npy (weight-file
    keys without the scope) and D_code_opt.npy / GAN_opt.npy (full variable names) reach the trainer's
    discriminators and their optimizers, converted per layer kind (conv vs conv-transpose)."""
    from engine.modules import discriminators as D

    folder = tmp_path / "dfl"
    _dfl_model(folder, "df-ud", True)
    mods, want_ms = _add_discriminators(folder)
    rc, out, io = _import(tmp_path, capsys)
    assert rc == 0, io.err
    assert "code discriminator + optimizer state; GAN discriminator + optimizer state" in io.out
    t = _trainer(out, tmp_path, "d")
    assert t.code_d is not None and t.gan_d is not None
    t.load(out)
    for attr, mod in mods.items():
        got_mod, got_opt = getattr(t, attr), getattr(t, attr + "_opt").opt
        for (n, p), (_, q) in zip(mod.named_parameters(), got_mod.named_parameters()):
            assert torch.equal(p, q), (attr, n)
            torch.testing.assert_close(got_opt.state[q]["ms"], torch.from_numpy(want_ms[(attr, n)]), rtol=0, atol=0)
        assert got_opt.iterations == 77
    # a GAN.npy that does not fit the options (gan_dims 8 in data.dat, the file built with 16) is refused
    other = D.gan_discriminator_for(64, 8, 16)
    part_path(folder, "GAN", "m").write_bytes(pickle.dumps(_weight_file(other), protocol=4))
    rc, _, io = _import(tmp_path, capsys)
    assert rc == 2 and "m_SAEHD_GAN.npy" in io.err and "gan_patch_size and gan_dims" in io.err


def test_export_dfl_round_trip_after_training(tmp_path, capsys):
    """DFL folder -> import-dfl -> one training step -> export-dfl -> a DFL folder with DFL's file set and
    key names whose import gives back exactly the trained weights, moments, discriminators and counters."""
    from engine.__main__ import main
    from synthetic_faces import write_synthetic_faceset
    from engine.dfl import import_model, read_data_file
    from engine.dfl.convert import import_dfl_training_state
    from engine.dfl.files import read_optimizer_file
    from engine.train import checkpoint as ck

    src = tmp_path / "dfl"
    _dfl_model(src, "df-ud", True)
    _add_discriminators(src)
    rc, out, io = _import(tmp_path, capsys)
    assert rc == 0, io.err
    for side, seed in (("A", 1), ("B", 2)):
        write_synthetic_faceset(tmp_path / side, 4, size=128, face_type="wf", seed=seed)
    run = tmp_path / "run"
    assert main(["train", str(out.with_suffix(".toml")), f"data.src='{tmp_path / 'A'}'", f"data.dst='{tmp_path / 'B'}'",
                 "data.workers=0", "train.batch_size=2", f"train.run_dir='{run}'", "--resume", str(out),
                 "--max-steps", "1", "--no-progress"]) == 0
    dst = tmp_path / "back"
    rc = main(["export-dfl", str(run), "--out", str(dst), "--name", "m"])
    assert rc == 0
    assert "wrote DFL model 'm'" in capsys.readouterr().out
    # DFL's file set and key names, as the original folder had them
    names = sorted(p.name for p in dst.iterdir())
    assert names == sorted(p.name for p in src.iterdir())
    for f in ("src_dst_opt", "D_code_opt", "GAN_opt"):
        a, b = read_optimizer_file(part_path(src, f, "m")), read_optimizer_file(part_path(dst, f, "m"))
        assert set(a) == set(b), f
        assert int(b["iters:0"]) == int(a["iters:0"]) + 1
    data = read_data_file(dst / "m_SAEHD_data.dat")
    orig = read_data_file(src / "m_SAEHD_data.dat")["options"]
    assert data["iter"] == ITERS + 1 and len(data["loss_history"]) == 1
    for k, v in orig.items():  # every option DFL stored comes back with its value
        assert data["options"][k] == v, k
    # importing the exported folder gives the trained checkpoint's state
    payload = ck.load_model_payload(run)
    state = ck.load_train_state(run)
    recipe, model = import_model(dst)
    for k, v in model.state_dict().items():
        assert torch.equal(v, payload["model"][k]), k
    st = import_dfl_training_state(dst, model, recipe)
    assert st["iter"] == ITERS + 1
    t = _trainer(out, tmp_path, "e")
    t.load(run)  # the trained run: optimizer state by parameter
    params = dict(t.model.named_parameters())
    for n, slots in st["dfl_optimizer"]["state"].items():
        for slot, v in slots.items():
            assert torch.equal(v, t.g_opt.opt.state[params[n]][slot].contiguous()), (n, slot)
    assert st["dfl_optimizer"]["iterations"] == t.g_opt.opt.iterations
    for attr in ("code_d", "gan_d"):
        mod = getattr(t, attr)
        for k, v in mod.state_dict().items():
            assert torch.equal(st["dfl_" + attr]["model"][k], v), (attr, k)
        named = dict(mod.named_parameters())
        opt = getattr(t, attr + "_opt").opt
        for n, slots in st["dfl_" + attr]["optimizer"]["state"].items():
            for slot, v in slots.items():
                assert torch.equal(v, opt.state[named[n]][slot].contiguous()), (attr, n, slot)
    # refusing to overwrite, and what DFL cannot take
    rc = main(["export-dfl", str(run), "--out", str(dst), "--name", "m"])
    assert rc == 2 and "already in" in capsys.readouterr().err
