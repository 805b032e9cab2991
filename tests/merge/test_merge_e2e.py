"""`torchsae merge` end to end on a tiny synthetic DFL workspace: 3 frames (one without a face, one with two),
aligned DFLJPG faces written by the extractor's own helpers, a tiny df-ud res-64 checkpoint.

Checks: merged frames exist with the frames' size, the faceless frame is bit-identical, faces change
their frame only inside the merge mask; the mp4 has every frame at the right size and frame rate, and
the source video's audio; a rerun skips finished frames and worker processes reproduce the in-process
result exactly; the recipe alone finds checkpoint, faces, frames and outputs; a DeepFaceLive-style .dfm
(outputs by position) runs through ONNX Runtime; user errors name the fix."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import cv2
import numpy as np
import pytest

from engine.__main__ import main
from engine.faces.landmarks import landmarks_68_3D

H, W = 160, 200
FACES = {1: [(90, 80, 0.9)], 2: [], 3: [(60, 70, 0.7), (140, 90, 0.8)]}


def _lm(cx, cy, s):
    return (landmarks_68_3D[:, :2] * s + np.array([cx, cy])).astype(np.float32)


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    """workspace/data_dst/{00001..3.png, aligned/*.jpg}, workspace/model.pt, runs/tiny/checkpoints/..."""
    import torch

    from engine import graph
    from engine import recipe as recipe_mod
    from engine.faces import dfljpg
    from engine.extract.align import align_face
    from engine.extract.extractor import face_metadata
    from engine.train import checkpoint

    root = tmp_path_factory.mktemp("merge_ws")
    dd = root / "workspace" / "data_dst"
    al = dd / "aligned"
    al.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i, faces in FACES.items():
        frame = (np.array([90, 120, 60]) + rng.integers(0, 20, (H, W, 3))).astype(np.uint8)
        for f in faces:
            cv2.fillConvexPoly(frame, cv2.convexHull(np.round(_lm(*f)).astype(np.int32)), (120, 150, 200))
        stem = f"{i:05d}"
        cv2.imwrite(str(dd / f"{stem}.png"), frame)
        for k, f in enumerate(faces):
            a = align_face(frame, _lm(*f), "f", 96)
            dfljpg.write(al / f"{stem}_{k}.jpg", a.image, face_metadata(a, np.array([0, 0, 9, 9]), f"{stem}.png"))
    text = (Path(__file__).resolve().parents[2] / "recipes" / "tests" / "tiny_df.toml").read_text()
    text = text.replace('dst = "tests/data/faces_B"', f'dst = "{al.as_posix()}"')
    text += f'\nrun_dir = "{(root / "runs" / "tiny").as_posix()}"\n\n[merge]\nerode = 10\nblur = 20\nworkers = 0\n'
    rpath = root / "tiny_merge.toml"
    rpath.write_text(text)
    rec = recipe_mod.load(rpath)
    torch.manual_seed(0)
    model = graph.build(rec.model)
    checkpoint.save_model_file(root / "workspace" / "model.pt", model, recipe_mod.dumps(rec))
    checkpoint.save(root / "runs" / "tiny", step=3, model=model, recipe_toml=recipe_mod.dumps(rec), train_state={})
    return {"root": root, "dd": dd, "aligned": al, "model": root / "workspace" / "model.pt", "recipe": rpath}


def _merge(capsys, *args) -> dict:
    rc = main(["merge", "--no-progress", *map(str, args)])
    out = capsys.readouterr().out
    assert rc == 0, out
    return json.loads(out[out.index("{"):])


def _video_info(path: Path) -> tuple[int, int, int, float, str]:
    cap = cv2.VideoCapture(str(path))
    n = 0
    while cap.read()[0]:
        n += 1
    w, h, fps = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)), cap.get(cv2.CAP_PROP_FPS)
    cap.release()
    from engine.merge.video import ffmpeg_exe

    probe = subprocess.run([ffmpeg_exe(), "-hide_banner", "-i", str(path)], capture_output=True, text=True).stderr
    return n, w, h, fps, probe


def test_merge_frames_video_and_resume(ws, capsys, tmp_path):
    out, video = tmp_path / "merged", tmp_path / "result.mp4"
    s = _merge(capsys, "--model", ws["model"], "--aligned", ws["aligned"], "--out", out, "--video", video,
               "--workers", 0, "--erode", 10, "--blur", 20, "--mask-dir", tmp_path / "masks")
    counts = (s["frames_total"], s["frames_merged"], s["frames_skipped"], s["frames_without_faces"], s["faces"])
    assert counts == (3, 3, 0, 1, 3)
    assert s["fps"] == 25.0 and s["audio_from"] is None
    for i in (1, 2, 3):
        src = cv2.imread(str(ws["dd"] / f"{i:05d}.png"))
        got = cv2.imread(str(out / f"{i:05d}.png"))
        mask = cv2.imread(str(tmp_path / "masks" / f"{i:05d}.png"), cv2.IMREAD_GRAYSCALE)
        assert got.shape == src.shape == (H, W, 3) and mask.shape == (H, W)
        if not FACES[i]:
            np.testing.assert_array_equal(got, src)  # no face: the frame passes through unchanged
            assert not mask.any()
        else:
            changed = np.abs(got.astype(int) - src).max(-1) > 0
            assert changed.sum() > 500 and not (changed & (mask == 0)).any()
    n, w, h, fps, _ = _video_info(video)
    assert (n, w, h, fps) == (3, W, H, 25.0)

    # resume: finished frames are skipped; worker processes give the in-process result bit for bit
    first = {i: (out / f"{i:05d}.png").read_bytes() for i in (1, 2, 3)}
    mtime = (out / "00001.png").stat().st_mtime_ns
    (out / "00003.png").unlink()
    s = _merge(capsys, "--model", ws["model"], "--aligned", ws["aligned"], "--out", out, "--no-video",
               "--workers", 2, "--erode", 10, "--blur", 20, "--mask-dir", tmp_path / "masks")
    assert (s["frames_merged"], s["frames_skipped"], s["faces"]) == (1, 2, 2)
    assert (out / "00001.png").stat().st_mtime_ns == mtime
    assert (out / "00003.png").read_bytes() == first[3]


def test_recipe_alone_is_enough(ws, capsys):
    """`make merge RECIPE=...`: model = newest checkpoint of the run folder, aligned = [data].dst, frames = its
    parent, out = <workspace>/merged, video = <workspace>/result.mp4, settings = [merge]."""
    s = _merge(capsys, ws["recipe"])
    wsp = ws["dd"].parent
    assert s["out"] == str(wsp / "merged") and s["video"] == str(wsp / "result.mp4")
    assert sorted(p.name for p in (wsp / "merged").iterdir()) == ["00001.png", "00002.png", "00003.png"]
    assert _video_info(wsp / "result.mp4")[:3] == (3, W, H)


def test_video_input_keeps_its_frame_rate_and_audio(ws, capsys, tmp_path):
    from engine.merge.video import ffmpeg_exe

    clip = tmp_path / "clip.mp4"
    subprocess.run([ffmpeg_exe(), "-y", "-loglevel", "error", "-framerate", "10", "-i", str(ws["dd"] / "%05d.png"),
                    "-f", "lavfi", "-i", "sine=frequency=440:duration=1", "-c:v", "libx264", "-pix_fmt", "yuv420p",
                    "-crf", "0", "-c:a", "aac", "-shortest", str(clip)], check=True)
    out = tmp_path / "m"
    s = _merge(capsys, "--model", ws["model"], "--aligned", ws["aligned"], "--frames", clip, "--out", out,
               "--video", tmp_path / "o.mp4", "--workers", 0, "--format", "jpg")
    assert s["fps"] == 10.0 and s["audio_from"] == str(clip) and s["faces"] == 3
    assert sorted(p.name for p in out.iterdir()) == ["00001.jpg", "00002.jpg", "00003.jpg"]
    n, w, h, fps, probe = _video_info(tmp_path / "o.mp4")
    assert (n, w, h, fps) == (3, W, H, 10.0)
    assert "Audio: aac" in probe and "Video: h264" in probe


def _dfm_like(path: Path, r: int = 64) -> None:
    """A DeepFaceLive-contract graph: in_face:0 (N,r,r,3) -> [out_face_mask, out_celeb_face, out_celeb_face_mask]
    = [mean over channels, 1 - x, max over channels]."""
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("in_face:0", TensorProto.FLOAT, ["N", r, r, 3])
    outs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["N", r, r, c])
            for n, c in (("out_face_mask:0", 1), ("out_celeb_face:0", 3), ("out_celeb_face_mask:0", 1))]
    one = helper.make_tensor("one", TensorProto.FLOAT, [], [1.0])
    nodes = [helper.make_node("ReduceMean", ["in_face:0"], ["out_face_mask:0"], axes=[3], keepdims=1),
             helper.make_node("Sub", ["one", "in_face:0"], ["out_celeb_face:0"]),
             helper.make_node("ReduceMax", ["in_face:0"], ["out_celeb_face_mask:0"], axes=[3], keepdims=1)]
    g = helper.make_graph(nodes, "dfm_like", [x], outs, initializer=[one])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 12)])
    m.ir_version = 7
    onnx.save(m, str(path))


def test_dfm_outputs_are_read_by_position(ws, capsys, tmp_path):
    from engine.merge.model import open_merge_model

    dfm = tmp_path / "m.dfm"
    _dfm_like(dfm)
    mm = open_merge_model(dfm)
    x = np.random.default_rng(0).random((2, 64, 64, 3), dtype=np.float32)
    face, prd_mask, dst_mask = mm.predict(x)
    np.testing.assert_allclose(face, 1 - x, atol=1e-6)
    np.testing.assert_allclose(prd_mask, x.max(-1, keepdims=True), atol=1e-6)  # celeb mask = learned-prd
    np.testing.assert_allclose(dst_mask, x.mean(-1, keepdims=True), atol=1e-6)  # face mask = learned-dst
    assert mm.face_type is None  # a DFL .dfm records none: the aligned faces' type is used
    s = _merge(capsys, "--model", dfm, "--aligned", ws["aligned"], "--out", tmp_path / "o", "--workers", 0)
    assert s["faces"] == 3 and "video" not in s


def test_user_errors_name_the_fix(ws, capsys, tmp_path):
    assert main(["merge", "--aligned", str(ws["aligned"])]) == 2
    assert "give a RECIPE or --model" in capsys.readouterr().err
    assert main(["merge", "--model", str(ws["model"]), "--aligned", str(ws["aligned"]), "--out", str(tmp_path / "o"),
                 "--mask-mode", "XSeg-prd"]) == 2
    assert "--xseg-model DIR" in capsys.readouterr().err
    assert main(["merge", "--model", str(ws["model"]), "--aligned", str(ws["aligned"]), "--out", str(tmp_path / "o"),
                 "--mask-mode", "XSeg-prd", "--xseg-model", str(tmp_path)]) == 2
    assert "has no XSeg_256.npy" in capsys.readouterr().err
    assert main(["merge", "--model", str(ws["model"]), "--aligned", str(ws["aligned"]), "--out", str(tmp_path / "o"),
                 "--super-resolution-power", "10"]) == 2
    assert "FaceEnhancer" in capsys.readouterr().err
    assert main(["merge", "--model", str(ws["model"]), "--aligned", str(tmp_path / "nope")]) == 2
    assert "no such folder" in capsys.readouterr().err


def test_xseg_mask_modes_run_dfl_weight_files(ws, capsys, tmp_path):
    """Mask modes 6-9 with --xseg-model: DFL-format XSeg_256.npy files (here base width 2) with a constant
    output (out_conv zeroed, bias b). sigmoid = 1 makes XSeg-prd*XSeg-dst the same mask as 'full'; sigmoid
    0.05 is cut to 0 by XSegNet.extract, so no face is blended and every frame comes back unchanged."""
    import pickle

    import torch

    from engine.modules.xseg import XSeg
    from engine.xseg.model import dfl_xseg_arrays

    for name, bias in (("ones", 20.0), ("low", float(np.log(0.05 / 0.95)))):
        net = XSeg(base_ch=2)
        with torch.no_grad():
            net.out_conv.weight.zero_()
            net.out_conv.bias.fill_(bias)
        (tmp_path / name).mkdir()
        (tmp_path / name / "XSeg_256.npy").write_bytes(pickle.dumps(dfl_xseg_arrays(net), protocol=4))
    common = ["--model", ws["model"], "--aligned", ws["aligned"], "--workers", 0, "--erode", 20, "--blur", 10,
              "--color-transfer", "none"]
    _merge(capsys, *common, "--out", tmp_path / "x", "--mask-mode", "XSeg-prd*XSeg-dst", "--xseg-model", tmp_path / "ones")
    _merge(capsys, *common, "--out", tmp_path / "f", "--mask-mode", "full")
    _merge(capsys, *common, "--out", tmp_path / "z", "--mask-mode", "7", "--xseg-model", tmp_path / "low")
    for i in (1, 3):
        assert (tmp_path / "x" / f"{i:05d}.png").read_bytes() == (tmp_path / "f" / f"{i:05d}.png").read_bytes()
        src = cv2.imread(str(ws["dd"] / f"{i:05d}.png"))
        np.testing.assert_array_equal(cv2.imread(str(tmp_path / "z" / f"{i:05d}.png")), src)
        assert np.abs(cv2.imread(str(tmp_path / "x" / f"{i:05d}.png")).astype(int) - src).max() > 20


def test_cli_takes_the_recipe_positional_with_overrides(ws, capsys):
    from engine.__main__ import main, parse_command
    from engine.merge.cli_merge import _recipe_of

    _, args = parse_command("merge", [str(ws["recipe"]), "--no-video", "merge.erode=12", "--blur", "4"])
    assert args.recipe == str(ws["recipe"]) and args.overrides == ["merge.erode=12"] and args.blur == 4
    assert _recipe_of(args).merge.erode == 12
    _, args = parse_command("merge", ["merge.erode=12", "--no-video", str(ws["recipe"])])  # any order
    assert _recipe_of(args).merge.erode == 12
    assert main(["merge", "merge.erode=12", "--model", str(ws["model"])]) == 2
    assert "need a recipe to apply to" in capsys.readouterr().err

