"""The default network: a multilayer perceptron with one output."""

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
