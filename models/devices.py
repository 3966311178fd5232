"""Where the networks run: the one rule that training, evaluation and the service follow.

Free of torch until a device is resolved, so that the command line can name the choices
without loading it.
"""

from typing import TYPE_CHECKING, Literal, get_args

if TYPE_CHECKING:
    import torch

Device = Literal["auto", "cpu", "cuda"]
DEVICES: tuple[str, ...] = get_args(Device)


class DeviceError(ValueError):
    """A device name that is unknown, or `cuda` on a machine without CUDA."""


def resolve_device(name: str, *, gpu: int = 0) -> "torch.device":
    """`cpu`; `cuda`: CUDA device `gpu`, DeviceError when torch sees none; `auto`: CUDA device
    `gpu` when torch sees CUDA, else the CPU. Under torchrun `gpu` is the process's LOCAL_RANK."""
    import torch

    if name not in DEVICES:
        raise DeviceError(f"unknown device {name!r}; use {', '.join(DEVICES)}")
    if name == "cuda" and not torch.cuda.is_available():
        raise DeviceError(
            "device cuda was asked for but torch sees no CUDA device on this machine; "
            "use auto or cpu"
        )
    if name == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", gpu)
