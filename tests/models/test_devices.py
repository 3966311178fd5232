import pytest
import torch

from models.devices import DeviceError, resolve_device


def test_cpu_is_always_available_and_auto_follows_cuda() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    expected = torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    assert resolve_device("auto") == expected


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is present")
def test_cuda_without_cuda_is_a_clear_error() -> None:
    with pytest.raises(DeviceError, match="no CUDA device"):
        resolve_device("cuda")
    assert resolve_device("auto", gpu=3) == torch.device("cpu"), "the GPU index needs a GPU"


def test_an_unknown_device_is_named() -> None:
    with pytest.raises(DeviceError, match="'tpu'; use auto, cpu, cuda"):
        resolve_device("tpu")
