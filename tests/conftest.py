import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # tests/tiny.py


@pytest.fixture(scope="session", autouse=True)
def _isolated_home(tmp_path_factory):
    """Generated snapshots and caches go to a per-session folder, never the user's home."""
    os.environ["VIDEO_AOT_HOME"] = str(tmp_path_factory.mktemp("video-aot-home"))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    yield


@pytest.fixture(scope="session", autouse=True)
def _graph_mode():
    import mindspore as ms

    ms.set_context(mode=ms.GRAPH_MODE, device_target="CPU")
    yield
