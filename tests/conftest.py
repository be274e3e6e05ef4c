import os

import pytest

# Headless rendering for every test, set the same way the CLI does (no library patching).
os.environ.setdefault("MUJOCO_GL", "egl")


@pytest.fixture
def mlflow_uri(tmp_path, monkeypatch):
    """A fresh embedded MLflow store per test, in the test's temp dir."""
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("GSA_STREAMS_DIR", str(tmp_path / "user-streams"))
    return uri


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny nets are overhead-bound; one thread also avoids oversubscription when the CPU is shared.
    Use in a module with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    import torch
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
