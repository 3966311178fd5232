import pytest
import torch


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device; none is present")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


def pytest_configure(config: pytest.Config) -> None:
    # Tests run small tensors beside servers and workers they start: one thread per process
    # avoids oversubscribing the cores (torch's pool of 2 threads costs more than it gives).
    torch.set_num_threads(1)
