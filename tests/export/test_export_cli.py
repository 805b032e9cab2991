"""`torchsae export`: checkpoints in, files out; `load_for_inference`, a recipe as the source, default paths,
errors."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from engine.__main__ import main
from engine.errors import CheckpointError
from engine.export import default_export_path, latest_checkpoint, load_for_inference
from engine.export.dfm import check_dfm

ROOT = Path(__file__).resolve().parents[2]


def _save(path: Path, model, recipe, step: int = 0) -> Path:
    from engine.recipe import dumps
    from engine.train.checkpoint import save_model_file

    return save_model_file(path, model, dumps(recipe), step=step)


def _swap(model, x):
    with torch.no_grad():
        return [t.numpy() for t in model.swap(x)]


def test_load_for_inference_round_trip(tiny_liae, tmp_path):
    recipe, model = tiny_liae
    ck = _save(tmp_path / "run" / "model.pt", model, recipe)
    r2, m2 = load_for_inference(ck)
    assert r2.name == "tiny_liae" and r2.model == recipe.model and not m2.training
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    for a, b in zip(_swap(model, x), _swap(m2, x)):
        np.testing.assert_array_equal(a, b)


def test_explicit_graph_checkpoint_round_trip(adapter_graph_toml, tmp_path):
    from engine import graph, recipe

    r = recipe.loads(adapter_graph_toml, source="adapters.toml")
    torch.manual_seed(0)
    model = graph.build(r).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    r2, m2 = load_for_inference(_save(tmp_path / "model.pt", model, r))
    assert r2.model.graph == r.model.graph and r2.name == "adapters"
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    for a, b in zip(_swap(model, x), _swap(m2, x)):
        np.testing.assert_array_equal(a, b)


def test_load_for_inference_errors(tiny_df, tmp_path):
    from engine.recipe import dumps, load
    from engine.train.checkpoint import model_payload

    recipe, model = tiny_df
    with pytest.raises(CheckpointError, match=r"nope\.pt: no such file or folder"):
        load_for_inference(tmp_path / "nope.pt")
    # weights of ae 32 under a recipe that says ae 16: refused, naming the file and the recipe's archi
    small = load(ROOT / "recipes" / "tests" / "tiny_df.toml", overrides=["model.ae_dims=16"])
    torch.save(model_payload(model, dumps(small), 0), tmp_path / "mismatch.pt")
    with pytest.raises(CheckpointError, match=r"mismatch\.pt: weights do not fit the stored recipe's graph \(df-ud, res 64\)"):
        load_for_inference(tmp_path / "mismatch.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match=r"junk\.pt"):
        load_for_inference(tmp_path / "junk.pt")


def _recipe_file(tmp_path: Path, run_dir: Path) -> Path:
    text = (ROOT / "recipes" / "tests" / "tiny_df.toml").read_text()
    text = text.replace("[train]", f'[train]\nrun_dir = "{run_dir.as_posix()}"')
    path = tmp_path / "myrun.toml"
    path.write_text(text)
    return path


def test_latest_checkpoint(tiny_df, tmp_path):
    from engine.recipe import dumps
    from engine.train.checkpoint import save

    recipe, model = tiny_df
    run = tmp_path / "run"
    rfile = _recipe_file(tmp_path, run)
    with pytest.raises(CheckpointError, match=r"myrun\.toml: no checkpoint in its run folder .*run"):
        latest_checkpoint(rfile)
    # loose .pt files: the newest by modification time
    for i, name in enumerate(["b.pt", "a.pt"]):
        p = _save(run / name, model, recipe)
        os.utime(p, (1_000_000 + i, 1_000_000 + i))
    assert latest_checkpoint(rfile) == run / "a.pt"
    # the trainer's layout wins: checkpoints/latest
    for step in (1, 2):
        save(run, step=step, model=model, recipe_toml=dumps(recipe), train_state={})
    got = latest_checkpoint(rfile)
    assert got == run  # the run folder: reading it takes its newest verified checkpoint
    r2, _ = load_for_inference(got)
    assert r2.name == "tiny_df"


def test_default_export_paths(tiny_df, tmp_path):
    recipe, _ = tiny_df
    ck = tmp_path / "run" / "checkpoints" / "step_00000005" / "model.pt"
    assert default_export_path(ck, recipe, "dfm") == tmp_path / "run" / "export" / "tiny_df.dfm"
    assert default_export_path(ck.parent, recipe, "onnx", parts=True) == tmp_path / "run" / "export" / "tiny_df_parts"
    assert default_export_path(tmp_path / "imported" / "model.pt", recipe, "dfm") == tmp_path / "imported" / "export" / "tiny_df.dfm"


def test_cli_export_recipe_source_and_default_out(tiny_df, tmp_path, capsys):
    from engine.recipe import dumps
    from engine.train.checkpoint import save

    recipe, model = tiny_df
    run = tmp_path / "run"
    save(run, step=3, model=model, recipe_toml=dumps(recipe), train_state={})
    rfile = _recipe_file(tmp_path, run)
    assert main(["export", str(rfile), "--format", "dfm"]) == 0  # a recipe: its run folder's newest checkpoint
    out = run / "export" / "tiny_df.dfm"
    check_dfm(onnx.load(str(out)), 64)
    meta = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert meta["torchsae.archi"] == "df-ud" and meta["torchsae.face_type"] == "f" and meta["torchsae.recipe"] == "tiny_df"
    assert "verified with ONNX Runtime" in capsys.readouterr().out
    assert main(["export", str(run), "--parts", "--no-simplify"]) == 0  # a run folder: its latest checkpoint
    assert (run / "export" / "tiny_df_parts" / "parts.json").is_file()


def test_cli_export_errors(tiny_df, tmp_path, capsys):
    recipe, model = tiny_df
    ck = _save(tmp_path / "m.pt", model, recipe)
    with pytest.raises(SystemExit) as e:  # argparse: the source is required
        main(["export", "--format", "dfm"])
    assert e.value.code == 2 and "the following arguments are required: source" in capsys.readouterr().err
    assert main(["export", str(ck), "--format", "dfm", "--opset", "17", "--out", str(tmp_path / "x.dfm")]) == 2
    assert "--opset 17 with --format dfm" in capsys.readouterr().err
    assert not (tmp_path / "x.dfm").exists()


def test_the_documented_latest_path_and_the_checkpoints_folder_load(tiny_df, tmp_path):
    """README: `export runs/<name>/checkpoints/latest` (a text pointer, not a torch file)."""
    from engine.recipe import dumps
    from engine.train.checkpoint import save

    recipe, model = tiny_df
    run = tmp_path / "run"
    for step in (1, 2):
        save(run, step=step, model=model, recipe_toml=dumps(recipe), train_state={})
    for src in (run / "checkpoints" / "latest", run / "checkpoints"):
        r2, m2 = load_for_inference(src)
        assert r2.name == "tiny_df"
    assert default_export_path(run / "checkpoints" / "latest", recipe, "dfm") == run / "export" / "tiny_df.dfm"


def test_latest_recipe_resolves_the_run_folder_against_the_recipes_project(tiny_df, tmp_path, monkeypatch):
    from engine.recipe import dumps
    from engine.train.checkpoint import save

    recipe, model = tiny_df
    proj = tmp_path / "proj"
    (proj / "recipes").mkdir(parents=True)
    rfile = proj / "recipes" / "tiny_df.toml"
    rfile.write_text((ROOT / "recipes" / "tests" / "tiny_df.toml").read_text())  # default run_dir: runs/tiny_df
    save(proj / "runs" / "tiny_df", step=4, model=model, recipe_toml=dumps(recipe), train_state={})
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert latest_checkpoint(rfile) == (proj / "runs" / "tiny_df").resolve()
    with pytest.raises(CheckpointError, match="no checkpoint in its run folder"):
        latest_checkpoint(_recipe_file(tmp_path, Path("runs/none")))


@pytest.mark.parametrize("command", ["export", "swap", "export-dfl"])
def test_zero_length_checkpoint_files_are_clear_errors(tiny_df, tmp_path, capsys, command):
    from engine.recipe import dumps
    from engine.train.checkpoint import save

    recipe, model = tiny_df
    run = tmp_path / "run"
    ckpt = save(run, step=1, model=model, recipe_toml=dumps(recipe), train_state={})
    (ckpt / "model.pt").write_bytes(b"")
    faces = tmp_path / "faces"
    faces.mkdir()
    argv = {"export": ["export", str(ckpt), "--format", "dfm", "--out", str(tmp_path / "x.dfm")],
            "swap": ["swap", str(ckpt / "model.pt"), "--faces", str(faces), "--out", str(tmp_path / "out")],
            "export-dfl": ["export-dfl", str(ckpt), "--out", str(tmp_path / "dfl"), "--name", "m"]}[command]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "model.pt: empty file (0 bytes)" in err, err
