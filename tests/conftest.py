"""Shared pytest set-up: quiet TensorFlow, fixed seeds, small thread pools."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import gc  # noqa: E402

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _seed():
    keras.utils.set_random_seed(0)
    np.random.seed(0)
    yield
    # Fresh layer names for the next test; skip the full gc.collect() (~0.5 s a test).
    keras.backend.clear_session(free_memory=False)


class TinyTeacher:
    """A resnet8 trained for one epoch on 128 Fashion-MNIST images: a real
    saved teacher for the recipe tests, trained once per test session."""

    def __init__(self, directory):
        import json

        self.dir = directory
        self.path = str(directory / "model.keras")
        self.metrics = json.loads((directory / "metrics.json").read_text())
        self.top1 = self.metrics["top1"]


@pytest.fixture(scope="session")
def tiny_teacher(tmp_path_factory):
    from tests.helpers import FASHION_MNIST, TINY, run_recipe

    if not os.path.exists(FASHION_MNIST):
        pytest.skip("needs Debian's dataset-fashion-mnist")
    directory = tmp_path_factory.mktemp("tiny_teacher")
    run_recipe("train_teacher", "--model=resnet8", f"--output_dir={directory}", *TINY)
    keras.backend.clear_session()
    return TinyTeacher(directory)


def pytest_collection_modifyitems(config, items):
    """Files holding end-to-end (`e2e`) tests first, each file's tests in their own order.
    Under `-n 2 --dist loadfile --no-loadscope-reorder` (scripts/test.sh) the long files
    start first and the many short ones even out the two workers' ends; xdist's default
    order (files by test count, most first) starts the long files, which hold few tests, last."""
    long_files = {item.path for item in items if item.get_closest_marker("e2e")}
    items.sort(key=lambda item: item.path not in long_files)  # stable: the rest keep their order


def pytest_collection_finish(session):
    """Put everything alive once the test modules are imported (TensorFlow's, Keras' and
    kdkeras' modules: over 300,000 objects that never become garbage) out of the
    collector's sight: every full collection then skips them. The LiteRT converter runs
    one per conversion (tf.lite's `convert`): in a long test process that was most of an
    export's time (test_export's set-up took 66 s late in a serial run, 5 s in a process of its own)."""
    gc.collect()
    gc.freeze()
