"""Shared fixtures of the service tests: a tiny model bundle (built once per session), the
runtime loaded from it, and clients of the real app (lifespan run through TestClient)."""

import io
import struct
import subprocess
import time
import zipfile
import zlib
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from models.bundle import build_bundle, save_bundle
from models.conditional import ConditionalConfig
from models.proposals import ProposalSettings
from service.core.config import Settings
from service.main import create_app
from service.runtime import ModelRuntime
from training.data.synthetic import render_scene

CLASSES = ["disc", "square", "triangle"]
IMAGE_SIZE = 96
API_KEY = "test-key-0123456789abcdef"


def wait_until_serving(
    url: str, process: subprocess.Popen, output: Callable[[], str], timeout_s: float
) -> None:
    """Return once `url`/healthz answers; fail with the server's output when the process exits
    or `timeout_s` passes first."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            httpx.get(f"{url}/healthz", timeout=5)
            return
        except httpx.TransportError:
            assert process.poll() is None, output()
            assert time.monotonic() < deadline, f"the server did not start within {timeout_s} s"
            time.sleep(0.2)


def scene_image(index: int = 0, size: int = IMAGE_SIZE) -> np.ndarray:
    """uint8[size, size, 3] synthetic scene."""
    return render_scene(np.random.default_rng(index), size).image


def encode(image: np.ndarray, format: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format=format)
    return buffer.getvalue()


def png_header(width: int, height: int) -> bytes:
    """A PNG whose header declares width x height pixels, with no pixel data."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body)
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b"")


def zip_of(members: dict[str, bytes]) -> bytes:
    """A deflated zip holding `members` (name -> content)."""
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zipped:
        for name, data in members.items():
            zipped.writestr(name, data)
    return archive.getvalue()


def upload(data: bytes, name: str = "image.png", kind: str = "image/png") -> dict:
    """The `files` argument of a client call sending `data` as the `image` field."""
    return {"image": (name, data, kind)}


@pytest.fixture(scope="session")
def bundle_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A freshly initialised tiny bundle of CLASSES, saved once per session; the same
    weights in every run, whichever test asks first."""
    torch.manual_seed(0)
    bundle = build_bundle(
        classes=CLASSES,
        preset="tiny",
        conditional_config=ConditionalConfig(trunk_widths=(8, 16), hidden_channels=16),
        proposal_settings=ProposalSettings(max_proposals=40, work_size=64),
        metadata={"trained": False, "purpose": "tests"},
    )
    path = tmp_path_factory.mktemp("bundle") / "tiny-model.pt"
    save_bundle(bundle, path)
    return path


@pytest.fixture(scope="session")
def make_settings(bundle_path: Path) -> Callable[..., Settings]:
    """Settings serving the tiny bundle on CPU; keyword arguments override fields."""

    def make(**overrides: object) -> Settings:
        values = {"model_path": bundle_path, "device": "cpu", "api_keys": []}
        return Settings(**(values | overrides))

    return make


@pytest.fixture(scope="session")
def runtime(make_settings: Callable[..., Settings]) -> Iterator[ModelRuntime]:
    """The tiny bundle loaded once; apps built with `runtime=` share it."""
    loaded = ModelRuntime.load(make_settings())
    yield loaded
    loaded.close()


@pytest.fixture(scope="session")
def make_client(
    make_settings: Callable[..., Settings], runtime: ModelRuntime
) -> Callable[..., AbstractContextManager[TestClient]]:
    """`with make_client(**settings) as client:` a client of a fresh app whose lifespan runs.

    shared_runtime=False makes the lifespan load the bundle itself (about a second).
    """

    @contextmanager
    def make(*, shared_runtime: bool = True, **overrides: object) -> Iterator[TestClient]:
        app = create_app(make_settings(**overrides), runtime=runtime if shared_runtime else None)
        with TestClient(app, raise_server_exceptions=False) as client:
            yield client

    return make


@pytest.fixture(scope="module")
def client(make_client: Callable[..., AbstractContextManager[TestClient]]) -> Iterator[TestClient]:
    """A client of the app with default limits, no API keys, the shared runtime."""
    with make_client() as test_client:
        yield test_client
