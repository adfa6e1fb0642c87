"""Conversions between torch tensors (on any device) and the numpy arrays on the host that the
compiled passes (:mod:`skfair._kernels`, :mod:`skfair._exact`) read and write.

Every crossing of that boundary goes through these functions: on the CPU they share memory
where they can, from another device they copy (``O(n)`` each way).
"""

import numpy as np
import torch

#: the host device (compared with a device object: reading ``device.type`` makes a new string
#: every time, and the comparison runs several times per training step)
CPU = torch.device("cpu")


def host_vector(tensor):
    """A tensor of shape (n,) as a contiguous numpy array on the host: a view of a contiguous
    CPU tensor, else a copy."""
    array = tensor.numpy(force=True)  # detached; copied to the host from another device
    return array if array.flags.c_contiguous else np.ascontiguousarray(array)


def host_array(values):
    """A tensor as a float64 numpy array on the host (a view of a CPU float64 tensor)."""
    values = values.detach()
    if values.dtype != torch.float64:
        values = values.to(torch.float64)
    return values.numpy() if values.device.type == "cpu" else values.cpu().numpy()


def as_host(values):
    """A float64 numpy array of ``values`` (a tensor on any device, an array or a list)."""
    if isinstance(values, torch.Tensor):
        return host_array(values)
    return np.asarray(values, dtype=np.float64)


def device_tensor(array, device):
    """A numpy array as a tensor on ``device`` (a tensor's device; sharing its memory on the
    CPU)."""
    tensor = torch.from_numpy(array)
    return tensor if device == CPU else tensor.to(device)


def to_device(tensor, like):
    """``tensor`` (a tensor, array or sequence; None stays None) as a tensor on the device of
    ``like``."""
    if tensor is None:
        return None
    return torch.as_tensor(tensor, device=like.device)
