"""Landmarks: DFL's alignment (`get_transform_mat`), point transforms and head pose (docs/dfl.md §6.4, §6.6).

Landmarks are the 68-point iBUG layout (jaw 0-16, brows 17-26, nose 27-35, eyes 36-47, mouth 48-67) as
(68, 2) arrays of pixel coordinates, x right and y down.

`get_transform_mat(lm, size, face_type)` returns the 2×3 affine M that maps source-image pixels to the
aligned `size`×`size` crop, exactly as DFL's `facelib/LandmarksProcessor.py` (the first, live definition):

1. `mat = umeyama(concat(lm[17:49], lm[54:55]), landmarks_2D_new)`: a similarity from the image to
   DFL's "unit" mean-face square.
2. The unit square's corners and centre mapped back to the image (`g_p[0..4]`, centre `g_c`).
3. Half-diagonal `mod = |g_p0 - g_p2|·(p·√2 + 0.5)/scale` with the face type's padding p (§6.3).
4. whole_face moves the centre up by 7 % of the square side; head moves it by a yaw-dependent
   horizontal shift and 50 % up. *_no_align types use an axis-aligned square of the same area.
5. `M = getAffineTransform([g_c - tb·mod, g_c + bt·mod, g_c + tb·mod], [(0,0), (S,0), (S,S)])`.

Numerical path: the intermediate steps keep DFL's dtypes (float32 unit-square points through
cv2.transform, float32 direction vectors), which is what makes the golden matrices match to ~1e-6.

Deviation from DFL: none in the numbers. `FaceType` accepts short or long names or DFL's ids.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from engine.faces.facetypes import FACE_TYPE_PADDING, FaceType
from engine.errors import DataError

__all__ = [
    "FaceType",
    "landmarks_2D_new",
    "landmarks_68_3D",
    "umeyama",
    "polygon_area",
    "transform_points",
    "get_transform_mat",
    "get_inverse_transform_mat",
    "estimate_averaged_yaw",
    "estimate_pitch_yaw_roll",
    "as_landmarks",
]

# DFL's mean face in its unit square, for the 33 alignment points: landmarks 17..48 then 54 (docs/dfl.md §6.4).
landmarks_2D_new = np.array(
    [
        [0.000213256, 0.106454],  # 17
        [0.0752622, 0.038915],  # 18
        [0.18113, 0.0187482],  # 19
        [0.29077, 0.0344891],  # 20
        [0.393397, 0.0773906],  # 21
        [0.586856, 0.0773906],  # 22
        [0.689483, 0.0344891],  # 23
        [0.799124, 0.0187482],  # 24
        [0.904991, 0.038915],  # 25
        [0.98004, 0.106454],  # 26
        [0.490127, 0.203352],  # 27
        [0.490127, 0.307009],  # 28
        [0.490127, 0.409805],  # 29
        [0.490127, 0.515625],  # 30
        [0.36688, 0.587326],  # 31
        [0.426036, 0.609345],  # 32
        [0.490127, 0.628106],  # 33
        [0.554217, 0.609345],  # 34
        [0.613373, 0.587326],  # 35
        [0.121737, 0.216423],  # 36
        [0.187122, 0.178758],  # 37
        [0.265825, 0.179852],  # 38
        [0.334606, 0.231733],  # 39
        [0.260918, 0.245099],  # 40
        [0.182743, 0.244077],  # 41
        [0.645647, 0.231733],  # 42
        [0.714428, 0.179852],  # 43
        [0.793132, 0.178758],  # 44
        [0.858516, 0.216423],  # 45
        [0.79751, 0.244077],  # 46
        [0.719335, 0.245099],  # 47
        [0.254149, 0.780233],  # 48
        [0.726104, 0.780233],  # 54
    ],
    dtype=np.float32,
)

# 68-point mean 3D face (x right, y down, z depth as DFL stores it: jaw corners positive, nose tip
# negative), used only for pose (§6.6). It is the published OpenFace / "300-W" mean 3D shape
# (Baltrusaitis et al., OpenFace; the same numbers ship as `model.txt` in common head-pose examples)
# with DFL's sign of z, as in DFL's facelib/LandmarksProcessor.py `landmarks_68_3D`. Values looked up
# from public copies of that table; verified here against golden data: x, y reproduce
# tests/golden/landmarks/landmarks_frontal (= lm3d[:, :2]·1.5 + 256) to 3e-5 px, and z reproduces the
# rotated landmarks_yaw20_roll15 set to 1.5e-5 px (see tests/data/test_landmarks.py).
landmarks_68_3D = np.array(
    [
        [-73.393523, -29.801432, 47.667532],  # 0
        [-72.775014, -10.949766, 45.909403],  # 1
        [-70.533638, 7.929818, 44.842580],  # 2
        [-66.850058, 26.074280, 43.141114],  # 3
        [-59.790187, 42.564390, 38.635298],  # 4
        [-48.368973, 56.481080, 30.750622],  # 5
        [-34.121101, 67.246992, 18.456453],  # 6
        [-17.875411, 75.056892, 3.609035],  # 7
        [0.098749, 77.061286, -0.881698],  # 8
        [17.477031, 74.758448, 5.181201],  # 9
        [32.648966, 66.929021, 19.176563],  # 10
        [46.372358, 56.311389, 30.770570],  # 11
        [57.343480, 42.419126, 37.628629],  # 12
        [64.388482, 25.455880, 40.886309],  # 13
        [68.212038, 6.990805, 42.281449],  # 14
        [70.486405, -11.666193, 44.142567],  # 15
        [71.375822, -30.365191, 47.140426],  # 16
        [-61.119406, -49.361602, 14.254422],  # 17
        [-51.287588, -58.769795, 7.268147],  # 18
        [-37.804800, -61.996155, 0.442051],  # 19
        [-24.022754, -61.033399, -6.606501],  # 20
        [-11.635713, -56.686759, -11.967398],  # 21
        [12.056636, -57.391033, -12.051204],  # 22
        [25.106256, -61.902186, -7.315098],  # 23
        [38.338588, -62.777713, -1.022953],  # 24
        [51.191007, -59.302347, 5.349435],  # 25
        [60.053851, -50.190255, 11.615746],  # 26
        [0.653940, -42.193790, -13.380835],  # 27
        [0.804809, -30.993721, -21.150853],  # 28
        [0.992204, -19.944596, -29.284036],  # 29
        [1.226783, -8.414541, -36.948060],  # 30
        [-14.772472, 2.598255, -20.132003],  # 31
        [-7.180239, 4.751589, -23.536684],  # 32
        [0.555920, 6.562900, -25.944448],  # 33
        [8.272499, 4.661005, -23.695741],  # 34
        [15.214351, 2.643046, -20.858157],  # 35
        [-46.047290, -37.471411, 7.037989],  # 36
        [-37.674688, -42.730510, 3.021217],  # 37
        [-27.883856, -42.711517, 1.353629],  # 38
        [-19.648268, -36.754742, -0.111088],  # 39
        [-28.272965, -35.134493, -0.147273],  # 40
        [-38.082418, -34.919043, 1.476612],  # 41
        [19.265868, -37.032306, -0.665746],  # 42
        [27.894191, -43.342445, 0.247660],  # 43
        [37.437529, -43.110822, 1.696435],  # 44
        [45.170805, -38.086515, 4.894163],  # 45
        [38.196454, -35.532024, 0.282961],  # 46
        [28.764989, -35.484289, -1.172675],  # 47
        [-28.916267, 28.612716, -2.240310],  # 48
        [-17.533194, 22.172187, -15.934335],  # 49
        [-6.684590, 19.029051, -22.611355],  # 50
        [0.381001, 20.721118, -23.748437],  # 51
        [8.375443, 19.035460, -22.721995],  # 52
        [18.876618, 22.394109, -15.610679],  # 53
        [28.794412, 28.079924, -3.217393],  # 54
        [19.057574, 36.298248, -14.987997],  # 55
        [8.956375, 39.634575, -22.554245],  # 56
        [0.381549, 40.395647, -23.591626],  # 57
        [-7.428895, 39.836405, -22.406106],  # 58
        [-18.160634, 36.677899, -15.121907],  # 59
        [-24.377490, 28.677771, -4.785684],  # 60
        [-6.897633, 25.475976, -20.893742],  # 61
        [0.340663, 26.014269, -22.220479],  # 62
        [8.444722, 25.326198, -21.025520],  # 63
        [24.474473, 28.323008, -5.712776],  # 64
        [8.449166, 30.596216, -20.671489],  # 65
        [0.205322, 31.408738, -21.903670],  # 66
        [-7.198266, 30.844876, -20.328022],  # 67
    ],
    dtype=np.float32,
)


def as_landmarks(lm, where: str = "landmarks") -> np.ndarray:
    """(68, 2) float array from any array-like (DFL stores lists of [x, y]); DataError otherwise."""
    arr = np.asarray(lm)
    if arr.shape != (68, 2) or not np.issubdtype(arr.dtype, np.number):
        raise DataError(f"{where}: expected 68 [x, y] landmark points (shape (68, 2)), got shape {arr.shape} {arr.dtype}")
    if not np.all(np.isfinite(arr)):
        raise DataError(f"{where}: landmarks contain NaN or infinity")
    return arr


def umeyama(src: np.ndarray, dst: np.ndarray, estimate_scale: bool = True) -> np.ndarray:
    """Least-squares similarity transform src → dst (Umeyama 1991), homogeneous (D+1)×(D+1).

    With centred point sets Xs, Xd (n × D): A = Xdᵀ·Xs / n = U·S·V; d = diag(1, …, sign(det A));
    R = U·diag(d)·V (rank-deficient A handled as in the paper); scale c = trace(S·d) / Σ var(src);
    t = μd - c·R·μs. Same arithmetic (and dtype flow) as DFL's core/mathlib/umeyama.py (§6.4).
    """
    num, dim = src.shape
    src_mean = src.mean(axis=0)
    dst_mean = dst.mean(axis=0)
    src_demean = src - src_mean
    dst_demean = dst - dst_mean
    a = dst_demean.T @ src_demean / num
    d = np.ones((dim,), dtype=np.float64)
    if np.linalg.det(a) < 0:
        d[dim - 1] = -1
    t = np.eye(dim + 1, dtype=np.float64)
    u, s, v = np.linalg.svd(a)
    rank = np.linalg.matrix_rank(a)
    if rank == 0:
        return np.nan * t
    if rank == dim - 1:
        if np.linalg.det(u) * np.linalg.det(v) > 0:
            t[:dim, :dim] = u @ v
        else:
            keep = d[dim - 1]
            d[dim - 1] = -1
            t[:dim, :dim] = u @ np.diag(d) @ v
            d[dim - 1] = keep
    else:
        t[:dim, :dim] = u @ np.diag(d) @ v
    scale = 1.0 / src_demean.var(axis=0).sum() * (s @ d) if estimate_scale else 1.0
    t[:dim, dim] = dst_mean - scale * (t[:dim, :dim] @ src_mean.T)
    t[:dim, :dim] *= scale
    return t


def polygon_area(x: np.ndarray, y: np.ndarray) -> float:
    """Shoelace area of a polygon given its vertex coordinates."""
    return float(0.5 * np.abs(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1))))


def transform_points(points, mat: np.ndarray, invert: bool = False) -> np.ndarray:
    """Apply a 2×3 affine to (N, 2) points with cv2.transform (DFL's `transform_points`).

    The result keeps the points' dtype (cv2 semantics: float32 in → float32 out). With invert=True the
    inverse affine (cv2.invertAffineTransform) is applied.
    """
    pts = np.asarray(points)
    if not np.issubdtype(pts.dtype, np.floating):
        pts = pts.astype(np.float64)
    mat = np.asarray(mat, dtype=np.float64)
    if invert:
        mat = cv2.invertAffineTransform(mat)
    out = cv2.transform(np.ascontiguousarray(pts.reshape(-1, 1, 2)), mat)
    return out.reshape(-1, 2)


def estimate_averaged_yaw(landmarks) -> float:
    """Signed yaw proxy `r - l` from jaw-to-nose x distances (used by the head face type, §6.4).

    l = mean(x27-x0, x28-x1, x29-x2), r = mean(x16-x27, x15-x28, x14-x29); inputs in DFL's unit space.
    """
    lm = np.asarray(landmarks, dtype=np.float64)
    l = ((lm[27, 0] - lm[0, 0]) + (lm[28, 0] - lm[1, 0]) + (lm[29, 0] - lm[2, 0])) / 3.0
    r = ((lm[16, 0] - lm[27, 0]) + (lm[15, 0] - lm[28, 0]) + (lm[14, 0] - lm[29, 0])) / 3.0
    return float(r - l)


_UNIT_SQUARE = np.array([(0, 0), (1, 0), (1, 1), (0, 1), (0.5, 0.5)], dtype=np.float32)


def _normalized(v: np.ndarray) -> tuple[np.ndarray, float]:
    v = v.astype(np.float32)
    n = float(np.linalg.norm(v))
    return v / n, n


def get_transform_mat(landmarks, output_size: int, face_type: FaceType | str | int, scale: float = 1.0) -> np.ndarray:
    """2×3 float64 affine mapping source-image pixels to the aligned crop (DFL §6.4).

    landmarks: (68, 2) in source pixels; output_size: crop side S in px; face_type: long/short name or
    FaceType; scale > 1 crops a smaller region (the merger's output_face_scale). MARK_ONLY has no crop
    and raises DataError.
    """
    ft = FaceType.parse(face_type)
    if ft not in FACE_TYPE_PADDING:
        raise DataError(f"face_type {ft.long_name!r} has no crop (valid: {', '.join(t.long_name for t in FACE_TYPE_PADDING)})")
    lm = as_landmarks(landmarks)
    padding, remove_align = FACE_TYPE_PADDING[ft]

    # Image → unit mean-face square, from 33 stable points (brows, nose, eyes, two mouth corners).
    mat = umeyama(np.concatenate([lm[17:49], lm[54:55]]), landmarks_2D_new, True)[0:2]
    g_p = transform_points(_UNIT_SQUARE, mat, True)  # (5, 2) float32: square corners + centre in the image
    g_c = g_p[4]

    tb_diag_vec, _ = _normalized(g_p[2] - g_p[0])
    bt_diag_vec, _ = _normalized(g_p[1] - g_p[3])
    mod = (1.0 / scale) * (np.linalg.norm(g_p[0] - g_p[2]) * (padding * np.sqrt(2.0) + 0.5))

    if ft == FaceType.WHOLE_FACE:
        vec, vec_len = _normalized(g_p[0] - g_p[3])
        g_c = g_c + vec * vec_len * 0.07
    elif ft == FaceType.HEAD:
        # Horizontal shift against the yaw (so the back of the head stays in frame), then 50 % up.
        yaw = estimate_averaged_yaw(transform_points(lm, mat, False))
        hvec, hvec_len = _normalized(g_p[0] - g_p[1])
        yaw *= np.abs(math.tanh(yaw * 2))
        g_c = g_c - hvec * (yaw * hvec_len / 2.0)
        vvec, vvec_len = _normalized(g_p[0] - g_p[3])
        g_c = g_c + vvec * vvec_len * 0.50

    if not remove_align:
        l_t = np.array([g_c - tb_diag_vec * mod, g_c + bt_diag_vec * mod, g_c + tb_diag_vec * mod])
    else:
        # Axis-aligned square with the area of the rotated one, centred on g_c.
        l_t = np.array([g_c - tb_diag_vec * mod, g_c + bt_diag_vec * mod, g_c + tb_diag_vec * mod, g_c - bt_diag_vec * mod])
        side = np.float32(math.sqrt(polygon_area(l_t[:, 0], l_t[:, 1])) / 2)
        l_t = np.array([g_c + [-side, -side], g_c + [side, -side], g_c + [side, side]])

    pts2 = np.float32(((0, 0), (output_size, 0), (output_size, output_size)))
    return cv2.getAffineTransform(l_t.astype(np.float32), pts2)


def get_inverse_transform_mat(landmarks, output_size: int, face_type: FaceType | str | int, scale: float = 1.0) -> np.ndarray:
    """2×3 affine mapping aligned-crop pixels back to the source image (inverse of get_transform_mat)."""
    return cv2.invertAffineTransform(get_transform_mat(landmarks, output_size, face_type, scale))


def _rotation_to_euler(r: np.ndarray) -> tuple[float, float, float]:
    sy = math.sqrt(r[0, 0] * r[0, 0] + r[1, 0] * r[1, 0])
    if sy >= 1e-6:
        x = math.atan2(r[2, 1], r[2, 2])
        y = math.atan2(-r[2, 0], sy)
        z = math.atan2(r[1, 0], r[0, 0])
    else:  # gimbal lock: roll is undetermined, DFL sets it to 0
        x = math.atan2(-r[1, 2], r[1, 1])
        y = math.atan2(-r[2, 0], sy)
        z = 0.0
    return x, y, z


_POSE_IDX = np.r_[0:27, 30:36]  # jaw, brows, nose bridge tip and nostrils: 33 points


def estimate_pitch_yaw_roll(aligned_landmarks, size: int = 256) -> tuple[float, float, float]:
    """(pitch, yaw, roll) in radians of aligned landmarks, DFL §6.6.

    solvePnP (iterative) of landmarks_68_3D[0:27, 30:36] against the same 2D points with a pinhole
    camera f = size, centre (size/2, size/2), no distortion; Euler angles of Rodrigues(rvec)
    (x = atan2(R21, R22), y = atan2(-R20, sy), z = atan2(R10, R00)), each clipped to ±π/2, returned as
    (-x, y, z). `size` is the aligned image width (DFL passes `shape[1]`).
    Like DFL, the solvePnP solution is used as is: for near-orthographic (synthetic) landmarks the
    iterative solver can settle on a mirrored pose behind the camera, whose roll then clips to ±π/2.
    """
    lm = as_landmarks(aligned_landmarks, "aligned_landmarks").astype(np.float32)
    f = float(size)
    camera_matrix = np.array([[f, 0, f / 2], [0, f, f / 2], [0, 0, 1]], dtype=np.float32)
    ok, rvec, _tvec = cv2.solvePnP(
        landmarks_68_3D[_POSE_IDX], lm[_POSE_IDX], camera_matrix, np.zeros((4, 1), dtype=np.float32)
    )
    if not ok:
        raise DataError("estimate_pitch_yaw_roll: solvePnP found no pose for these landmarks")
    pitch, yaw, roll = _rotation_to_euler(cv2.Rodrigues(rvec)[0])
    half_pi = math.pi / 2
    pitch = float(np.clip(pitch, -half_pi, half_pi))
    yaw = float(np.clip(yaw, -half_pi, half_pi))
    roll = float(np.clip(roll, -half_pi, half_pi))
    return -pitch, yaw, roll
