"""The network: the default multilayer perceptron with one output, and the contract every
network (the default or the user's ``module``) meets."""

import torch
from torch import nn

ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "logistic": nn.Sigmoid, "gelu": nn.GELU}


def make_mlp(n_features, hidden_layer_sizes, activation):
    """``Linear -> activation`` for every hidden size, then ``Linear(..., 1)``."""
    layers, width = [], n_features
    for size in hidden_layer_sizes:
        layers += [nn.Linear(width, size), ACTIVATIONS[activation]()]
        width = size
    layers.append(nn.Linear(width, 1))
    return nn.Sequential(*layers)


def outputs(module, x):
    """The network's one output per row of ``x``, shape (n,) (the module returns (n,) or (n, 1),
    which :func:`check_module` verified at fit)."""
    return module(x).reshape(-1)


def ends_in_sigmoid(module):
    """Whether the module is a Sequential whose last layer is a sigmoid: its outputs are
    probabilities, not logits."""
    if not isinstance(module, nn.Sequential):
        return False
    layers = list(module)  # (indexing a Sequential walks it, and costs more)
    return bool(layers) and isinstance(layers[-1], nn.Sigmoid)


def check_module(module, n_inputs, inputs):
    """Raise :class:`ValueError` unless ``module`` maps ``(n, n_inputs)`` float32 inputs to one
    output per row, shape (n,) or (n, 1); ``inputs`` describes where the inputs come from, for
    the message. The probe runs in eval mode (no batch statistics recorded) under no_grad."""
    parameter = next(module.parameters(), None)
    probe = torch.zeros(2, n_inputs, dtype=torch.float32,
                        device=None if parameter is None else parameter.device)
    training = module.training
    module.eval()
    try:
        with torch.no_grad():
            out = module(probe)
    except RuntimeError as exc:
        raise ValueError(
            f"module does not take the network's {n_inputs} inputs ({inputs}): {exc}"
        ) from None
    finally:
        module.train(training)
    if not isinstance(out, torch.Tensor) or tuple(out.shape) not in {(2,), (2, 1)}:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(
            f"module must return one output per row, of shape (n,) or (n, 1); for 2 rows it "
            f"returned {shape}."
        )
