"""engine.eval end to end on a tiny model and synthetic faces: [train].eval_every during training, the held-out
record in checkpoints, `torchsae eval` over a run folder, exported models, and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from synthetic_faces import write_synthetic_faceset

from engine import recipe
from engine.__main__ import main
from engine.eval.evaluate import KEY_METRICS
from engine.eval.training import TrainingEvaluator
from engine.train import checkpoint as ck
from engine.train.loop import train

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "recipes" / "tests" / "tiny_df.toml"


@pytest.fixture(scope="module")
def faces(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval_faces")
    write_synthetic_faceset(root / "A", 8, size=128, face_type="wf", seed=11)
    write_synthetic_faceset(root / "B", 8, size=128, face_type="wf", seed=12, xseg_every=2)
    return root / "A", root / "B"


def _recipe(faces, run_dir, *extra):
    a, b = faces
    return recipe.load(TINY, [f"data.src='{a}'", f"data.dst='{b}'", f"train.run_dir='{run_dir}'",
                              "train.preview_every=0", *extra])


@pytest.fixture(scope="module")
def trained(faces, tmp_path_factory):
    """tiny_df trained 2 steps with 25 % held out and an evaluation after every step."""
    run = tmp_path_factory.mktemp("run") / "with_eval"
    r = _recipe(faces, run, "data.eval_fraction=0.25", "data.eval_block=2", "train.eval_every=1")
    ev = TrainingEvaluator(r)
    train(r, max_steps=2, progress=False, evaluator=ev)
    return r, run, ev


def test_training_evaluates_held_out_faces_and_logs_every_metric(trained):
    r, run, ev = trained
    assert ev.failures == 0 and [h["step"] for h in ev.history] == [1, 2]
    lines = [json.loads(x) for x in (run / "logs" / "eval.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == [1, 2]
    for x in lines:
        assert set(KEY_METRICS) <= set(x) and x["n_faces"] == 2 and x["n_src"] == 2
        assert x["recon_dssim_src"] > 0 and x["psnr_dst"] > 0 and x["landmark_nme"] is not None
    assert sorted(p.name for p in (run / "logs" / "eval").glob("*.png")) == ["step_00000001.png", "step_00000002.png"]
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tags = EventAccumulator(str(run / "logs")).Reload().Tags()
    want = {"eval/identity_retrieval", "eval/landmark_nme", "eval/recon_dssim_src", "eval/seconds"}
    assert want <= set(tags["scalars"])
    assert "eval/samples" in tags["images"]
    held = ck.load_model_payload(run)["held_out"]  # recorded in the checkpoint
    assert len(held["src"]["names"]) == 2 and len(held["dst"]["names"]) == 2


def test_evaluation_does_not_change_training(trained, faces, tmp_path):
    r, run, _ = trained
    plain = _recipe(faces, tmp_path / "no_eval", "data.eval_fraction=0.25", "data.eval_block=2")
    train(plain, max_steps=2, progress=False)
    a, b = ck.load_model_payload(run)["model"], ck.load_model_payload(tmp_path / "no_eval")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_cli_scores_every_checkpoint_of_a_run(trained, tmp_path, capsys):
    _, run, ev = trained
    out = tmp_path / "report"
    assert main(["eval", str(run), "--out", str(out), "--no-detect"]) == 0
    doc = json.loads((out / "eval.json").read_text())
    assert doc["format"] == "torchsae-eval-1"
    entries = doc["models"]
    assert [e["step"] for e in entries] == [1, 2]
    for e in entries:
        assert set(KEY_METRICS) <= set(e) and e["faces"]["source"].startswith("held-out")
        assert e["face_found_rate"] is None and "face_found_rate" in e["unavailable"]
        assert (out / e["grid"]).is_file() and e["steps_chart"] == "steps_00.png"
    # the CLI and the in-training evaluation measure the same thing
    assert entries[1]["recon_dssim_src"] == pytest.approx(ev.history[1]["recon_dssim_src"], rel=1e-6)
    assert entries[1]["landmark_nme"] == pytest.approx(ev.history[1]["landmark_nme"], rel=1e-6)
    assert (out / "steps_00.png").is_file() and "metrics over training steps" not in (out / "report.html").read_text()
    assert "step_00000002" in capsys.readouterr().out
    # a recipe stands for its run folder; overrides on the line apply to it
    from engine.eval.models import expand_inputs

    refs = expand_inputs([TINY], (f"train.run_dir='{run}'",))
    assert [r.path.name for r in refs] == ["step_00000001", "step_00000002"] and refs[0].run == run


def test_exported_models_and_bad_input(trained, faces, tmp_path):
    from engine.export import export_model
    from engine.export.inference import load_for_inference

    r, run, _ = trained
    rec, model = load_for_inference(run)
    dfm = export_model(model, tmp_path / "m.dfm", fmt="dfm",
                       metadata={"face_type": rec.model.face_type}).path
    bare = export_model(model, tmp_path / "bare.onnx", fmt="onnx", simplify_graph=False).path  # no face type
    a, b = faces
    out = tmp_path / "cmp"
    missing = tmp_path / "nowhere.pt"
    rc = main(["eval", str(dfm), str(bare), str(ck.resolve_latest(run)), "--faces", str(a), str(b), "--out", str(out),
               "--no-detect", "--max-faces", "3"])
    assert rc == 1  # the bare ONNX cannot be scored without --face-type
    e_dfm, e_bare, e_pt = json.loads((out / "eval.json").read_text())["models"]
    assert e_dfm["kind"] == "dfm" and e_dfm["face_type"] == "f" and e_dfm["n_faces"] == 3
    assert e_dfm["recon_dssim_dst"] is None and "DFM contract" in e_dfm["unavailable"]["recon_dst"]
    # the exported swap path is the checkpoint's: the same src reconstruction and swaps
    assert e_dfm["recon_dssim_src"] == pytest.approx(e_pt["recon_dssim_src"], abs=1e-4)
    assert e_dfm["landmark_nme"] == pytest.approx(e_pt["landmark_nme"], abs=0.02)
    assert "--face-type" in e_bare["error"]
    assert any("folder this model trained on" in w for w in e_pt["warnings"])
    assert main(["eval", str(bare), "--faces", str(a), str(b), "--out", str(tmp_path / "ft"), "--no-detect",
                 "--max-faces", "2", "--face-type", "f"]) == 0
    # no held-out record and no --faces: a clear error entry, exit status 1
    plain = tmp_path / "plain.pt"
    ck.save_model_file(plain, model, recipe.dumps(rec))
    assert main(["eval", str(plain), "--out", str(tmp_path / "x")]) == 1
    err = json.loads((tmp_path / "x" / "eval.json").read_text())["models"][0]["error"]
    assert "no held-out faces recorded" in err and "--faces" in err
    assert main(["eval", str(missing), "--out", str(tmp_path / "y")]) == 2  # not a model at all: TorchSAEError



def test_imported_dfl_model_is_scored_like_its_checkpoint(trained, faces, tmp_path):
    from engine.dfl.convert import export_dfl_checkpoint

    _, run, _ = trained
    latest = ck.resolve_latest(run)
    export_dfl_checkpoint(latest, tmp_path / "dfl", "tiny")  # a DFL model folder, imported again by eval
    a, b = faces
    out = tmp_path / "dfl_eval"
    assert main(["eval", str(tmp_path / "dfl"), str(latest), "--faces", str(a), str(b), "--out", str(out),
                 "--no-detect", "--max-faces", "2"]) == 0
    e_dfl, e_pt = json.loads((out / "eval.json").read_text())["models"]
    assert e_dfl["kind"] == "dfl" and e_pt["kind"] == "checkpoint"
    for k in ("recon_dssim_src", "recon_dssim_dst", "landmark_nme", "identity_margin"):
        assert e_dfl[k] == pytest.approx(e_pt[k], abs=1e-4), k
