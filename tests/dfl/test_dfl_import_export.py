"""Export to DFL's on-disk layout and back, key/shape checking with precise errors, the import-dfl CLI."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from engine.dfl import (dfl_part_arrays, export_dfl_model, export_dfl_parts, import_model, load_dfl_parts,
                        read_data_file, read_part_file)
from engine.dfl.keymap import dfl_to_torch_array, dfl_to_torch_name, torch_to_dfl_array, torch_to_dfl_name
from engine.errors import CheckpointError, TorchSAEError
from engine.graph import build
from engine.recipe.specs import ModelSpec

TINY = dict(resolution=64, ae_dims=16, e_dims=4, d_dims=4, d_mask_dims=4)


def _options(archi):
    return {"archi": archi, **TINY}


def test_key_and_layout_maps_are_inverse():
    assert torch_to_dfl_name("encoder.down1.downs_0.conv1.weight") == "down1/downs_0/conv1/weight:0"
    assert torch_to_dfl_name("inter.dense1.bias", strip_part=False) == "inter/dense1/bias:0"
    assert dfl_to_torch_name("decoder", "upscalem3/conv1/weight:0") == "decoder.upscalem3.conv1.weight"
    rng = np.random.default_rng(0)
    hwio = rng.standard_normal((3, 5, 7, 11)).astype(np.float32)
    oihw = dfl_to_torch_array(hwio)
    assert oihw.shape == (11, 7, 3, 5) and oihw[10, 6, 2, 4] == hwio[2, 4, 6, 10]
    assert np.array_equal(torch_to_dfl_array(oihw), hwio)
    dense = rng.standard_normal((13, 4)).astype(np.float32)
    assert np.array_equal(dfl_to_torch_array(dense), dense.T) and np.array_equal(torch_to_dfl_array(dense.T), dense)


def test_conv_layout_gives_the_same_convolution():
    """A DFL HWIO kernel applied the TF way (numpy NHWC correlation) == our converted conv."""
    rng = np.random.default_rng(1)
    w = rng.standard_normal((3, 3, 2, 4)).astype(np.float32)
    x = rng.standard_normal((1, 6, 6, 2)).astype(np.float32)
    xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    ref = np.zeros((1, 6, 6, 4), np.float32)
    for i in range(6):
        for j in range(6):
            ref[0, i, j] = np.tensordot(xp[0, i:i + 3, j:j + 3, :], w, axes=([0, 1, 2], [0, 1, 2]))
    conv = torch.nn.Conv2d(2, 4, 3, padding=1, bias=False)
    conv.weight.data = torch.from_numpy(dfl_to_torch_array(w))
    got = conv(torch.from_numpy(x).permute(0, 3, 1, 2)).permute(0, 2, 3, 1).detach().numpy()
    np.testing.assert_allclose(got, ref, atol=1e-5)


@pytest.mark.parametrize("archi", ["df-ud", "liae-udtc", "df-t"])
def test_export_then_import_is_identical(tmp_path, archi):
    torch.manual_seed(0)
    model = build(ModelSpec(archi=archi, **TINY))
    files = export_dfl_parts(model, tmp_path, "m")
    assert [f.name for f in files] == [f"m_SAEHD_{p}.npy" for p in model.parts()]
    raw = files[0].read_bytes()
    assert raw[:2] == b"\x80\x04"  # pickle protocol 4, as DFL writes
    enc = read_part_file(files[0])
    w = enc["down1/downs_0/conv1/weight:0" if "t" not in archi else "down1/conv1/weight:0"]
    assert w.shape == (5, 5, 3, 4) and w.dtype == np.float32  # HWIO
    _, back = import_model(tmp_path, name="m", options=_options(archi))
    a, b = model.state_dict(), back.state_dict()
    assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)


def test_load_one_part_file_into_a_standalone_module(tmp_path):
    from engine.dfl import load_dfl_part_file
    from engine.modules import Encoder

    torch.manual_seed(7)
    model = build(ModelSpec(archi="df-ud", **TINY))
    export_dfl_parts(model, tmp_path)
    enc = Encoder(3, 4, "ud")
    load_dfl_part_file(enc, tmp_path / "encoder.npy", "encoder")
    x = torch.rand(1, 3, 64, 64)
    torch.testing.assert_close(enc(x), model.encoder(x), atol=0, rtol=0)
    with pytest.raises(CheckpointError, match=r"inter\.npy: does not fit part 'encoder'"):
        load_dfl_part_file(enc, tmp_path / "inter.npy", "encoder")


def test_export_dfl_model_writes_data_dat(tmp_path):
    model = build(ModelSpec(archi="liae-ud", **TINY))
    files = export_dfl_model(model, tmp_path, "mine", iter=50)
    assert files[-1].name == "mine_SAEHD_data.dat"
    data = read_data_file(files[-1])
    assert data["iter"] == 50 and data["options"] == {"face_type": "f", **_options("liae-ud")}
    recipe, back = import_model(tmp_path)  # no options needed: data.dat has them
    assert recipe.model.archi == "liae-ud"
    assert all(torch.equal(x, y) for x, y in zip(model.state_dict().values(), back.state_dict().values()))
    with pytest.raises(TorchSAEError, match="iter = 0: DFL treats 0 as a new model"):
        export_dfl_model(model, tmp_path, "mine", iter=0)


def test_non_dfl_graph_cannot_go_to_dfl(tmp_path):
    from engine.recipe.graph_spec import parse_graph_table

    g, _ = parse_graph_table({
        "nodes": [{"name": "encoder", "type": "encoder"}, {"name": "inter", "type": "inter", "input": "encoder"},
                  {"name": "a", "type": "adapter", "input": "inter"}, {"name": "decoder_src", "type": "decoder"},
                  {"name": "decoder_dst", "type": "decoder"}],
        "identities": {"src": {"code": "a", "decoder": "decoder_src"},
                       "dst": {"code": "inter", "decoder": "decoder_dst"}},
    })
    model = build(ModelSpec(archi="df-ud", graph=g, **TINY))
    with pytest.raises(TorchSAEError, match="not one of DFL's archis"):
        export_dfl_parts(model, tmp_path)


def _write_parts(model, folder, name=None, edit=None):
    for part, module in model.parts().items():
        arrays = dfl_part_arrays(module, part)
        if edit:
            edit(part, arrays)
        path = folder / (f"{name}_SAEHD_{part}.npy" if name else f"{part}.npy")
        path.write_bytes(pickle.dumps(arrays, protocol=4))


def test_shape_mismatch_names_file_key_and_shapes(tmp_path):
    _write_parts(build(ModelSpec(archi="df-ud", **{**TINY, "ae_dims": 24})), tmp_path)
    with pytest.raises(CheckpointError) as e:
        import_model(tmp_path, options=_options("df-ud"))
    msg = str(e.value)
    assert "inter.npy: does not fit part 'inter'" in msg
    assert "key 'dense1/weight:0': expected shape (512, 16), found (512, 24)" in msg


def test_missing_and_unexpected_keys_and_files(tmp_path):
    model = build(ModelSpec(archi="df-ud", **TINY))

    def edit(part, arrays):
        if part == "decoder_dst":
            arrays.pop("out_convm/bias:0")
            arrays["extra/weight:0"] = np.zeros((3, 3), np.float32)

    _write_parts(model, tmp_path, "m", edit)
    with pytest.raises(CheckpointError) as e:
        import_model(tmp_path, name="m", options=_options("df-ud"))
    msg = str(e.value)
    assert "m_SAEHD_decoder_dst.npy: does not fit part 'decoder_dst'" in msg
    assert "key 'out_convm/bias:0' missing (expected shape (1,))" in msg
    assert "unexpected key 'extra/weight:0' (shape (3, 3))" in msg
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointError):
        load_dfl_parts(model, tmp_path, "m")
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # nothing half-loaded
    (tmp_path / "m_SAEHD_inter.npy").unlink()
    with pytest.raises(CheckpointError, match=r"m_SAEHD_inter\.npy: DFL part file missing"):
        import_model(tmp_path, name="m", options=_options("df-ud"))


def test_folder_resolution_errors(tmp_path):
    with pytest.raises(CheckpointError, match="not a DFL model folder"):
        import_model(tmp_path / "nope")
    model = build(ModelSpec(archi="df", **TINY))
    _write_parts(model, tmp_path)
    with pytest.raises(CheckpointError, match="give at least archi and resolution"):
        import_model(tmp_path)
    export_dfl_model(model, tmp_path, "a")
    export_dfl_model(model, tmp_path, "b")
    with pytest.raises(CheckpointError, match=r"holds several SAEHD models \(a, b\); choose one with --name"):
        import_model(tmp_path)
    with pytest.raises(CheckpointError, match=r"no SAEHD model named 'c' \(found: a, b\)"):
        import_model(tmp_path, name="c")
    recipe, _ = import_model(tmp_path / "b_SAEHD_data.dat")
    assert recipe.model.archi == "df"


def test_cli_import_dfl(tmp_path, capsys):
    from engine.__main__ import main
    from engine.train.checkpoint import load_model_payload

    torch.manual_seed(3)
    model = build(ModelSpec(archi="liae-ud", **TINY))
    export_dfl_parts(model, tmp_path / "dfl")
    out = tmp_path / "ck" / "model.pt"
    rc = main(["import-dfl", str(tmp_path / "dfl"), "--out", str(out), "--archi", "liae-ud", "--resolution", "64",
               "--ae-dims", "16", "--e-dims", "4", "--d-dims", "4", "--d-mask-dims", "4"])
    assert rc == 0 and "imported DFL liae-ud @ 64" in capsys.readouterr().out
    payload = load_model_payload(out)
    assert payload["step"] == 0 and 'archi = "liae-ud"' in payload["recipe_toml"]
    sd = model.state_dict()
    assert set(payload["model"]) == set(sd) and all(torch.equal(payload["model"][k], sd[k]) for k in sd)
    rc = main(["import-dfl", str(tmp_path / "dfl"), "--out", str(out), "--archi", "liae-ud", "--resolution", "64"])
    assert rc == 2 and "does not fit part" in capsys.readouterr().err
