"""engine.eval on real faces: the demo workspace's two people (src: a woman, 472 faces; dst: a man, 72).

Independent expectations: dlib's recognizer puts faces of one person closer to their own centroid than to
the other person's (and within its 0.6 same-person distance); identical images give zero landmark error,
zero pose error and zero DSSIM; a garbage output is no face and is not identified as src. Skipped when
the demo faces are not extracted (`make data`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from engine.eval import metrics as M
from engine.eval.evaluate import KEY_METRICS, Evaluator
from engine.eval.faces import load_side
from engine.eval.models import EvalModel

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "workspace" / "demo"
R, FT = 64, "wf"

pytestmark = pytest.mark.skipif(not all((DEMO / side / "aligned").is_dir() for side in ("data_src", "data_dst")),
                                reason="demo faces not extracted (make data)")


class _Fixed(EvalModel):
    kind, path, resolution, face_type, no_recon = "test", Path("test"), R, FT, {}

    def __init__(self, label, fn):
        self.label, self.fn = label, fn

    def swap(self, faces):
        return self.fn(faces)

    def reconstruct(self, faces, identity):
        return self.fn(faces)


@pytest.fixture(scope="module")
def evaluator():
    src = load_side(DEMO / "data_src" / "aligned", resolution=R, face_type=FT, max_faces=8)
    dst = load_side(DEMO / "data_dst" / "aligned", resolution=R, face_type=FT, max_faces=6)
    return Evaluator(src, dst, resolution=R, face_type=FT, detect=True)


def test_real_faces_are_closer_to_their_own_centroid(evaluator):
    real = evaluator.real()
    a, b = real["src"].embeddings, real["dst"].embeddings
    assert len(a) == 8 and len(b) == 6
    for own, other in ((a, b), (b, a)):
        for i in range(len(own)):
            loo = np.delete(own, i, 0).mean(0)  # the person's centroid without this face
            d_own, d_other = np.linalg.norm(own[i] - loo), np.linalg.norm(own[i] - other.mean(0))
            assert d_own < M.SAME_PERSON < d_other, (i, d_own, d_other)
    cal = evaluator.calibration()
    assert cal["real_identity_retrieval"] == 1.0 and cal["no_swap_identity_retrieval"] == 0.0
    assert cal["real_identity_margin"] > 0.2 and cal["real_face_found_rate"] == 1.0


def test_identical_images_give_zero_landmark_pose_and_dssim_error(evaluator):
    r = evaluator.evaluate(_Fixed("identity", lambda f: f.copy()))
    m = r.metrics
    assert set(KEY_METRICS) <= set(m)
    assert m["landmark_nme"] == 0 and m["landmark_nme_mouth"] == 0
    assert m["yaw_error_deg"] == 0 and m["pitch_error_deg"] == 0
    assert m["recon_dssim_src"] == 0 and m["recon_dssim_dst"] == 0 and m["mse_src"] == 0
    assert m["psnr_src"] == M.PSNR_CAP
    assert m["identity_dist_own_dst"] == 0
    assert m["identity_retrieval"] == 0 and m["identity_margin"] < -0.3  # the dst face stays the dst person
    assert m["face_found_rate"] == 1.0 and m["n_faces"] == 6 and m["n_src"] == 8
    assert all(f["nme"] == 0 for f in r.per_face)


def test_garbage_output_is_counted_as_no_face_and_never_identified(evaluator):
    noise = np.random.default_rng(0)

    def garbage(f):
        out = noise.uniform(0, 1, f.shape).astype(np.float32)
        out[0] = np.nan  # and one non-finite output
        return out

    m = evaluator.evaluate(_Fixed("noise", garbage)).metrics
    assert m["identity_retrieval"] == 0.0  # far from both identities: not credited as src
    assert m["no_face_found"] == 6 and m["face_found_rate"] == 0.0
    assert m["skipped"]["no face found in the swap (kept in the metrics)"] == 6
    assert m["landmark_nme"] > 0.05 and m["recon_dssim_src"] > 0.1
    assert any("non-finite" in w for w in m["warnings"]) and m["n_faces"] == 6
