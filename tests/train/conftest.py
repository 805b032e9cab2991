import pytest

from synthetic_faces import write_synthetic_faceset


@pytest.fixture(scope="session")
def facesets(tmp_path_factory):
    """Two small synthetic DFL facesets (JPEGs with DFLJPG metadata), shared by the training tests."""
    root = tmp_path_factory.mktemp("faces")
    write_synthetic_faceset(root / "A", 6, size=128, face_type="wf", seed=1)
    write_synthetic_faceset(root / "B", 6, size=128, face_type="wf", seed=2, xseg_every=2)
    return root / "A", root / "B"
