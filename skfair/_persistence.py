"""The estimators' fitted state in types that every persistence format stores.

pickle and joblib store any object. ``skops.io``, the format scikit-learn recommends for sharing
models (it loads a file without running code from it), stores numpy arrays, Python containers
whose dict keys are strings or integers, and objects made of those; it refuses torch tensors and
modules (loading one would run torch's unpickling) and dicts keyed by tuples (the constraint rows'
keys). :func:`plain` puts a state in those types, :func:`restored` takes it back; the
estimators and their streams apply them in ``__getstate__`` and ``__setstate__``, so pickle,
joblib and skops store the same state.

What stays outside: a network given as ``module`` that is not the multilayer perceptron of
:func:`skfair._network.make_mlp` is arbitrary torch code, kept as the torch module itself
(:class:`TorchModule`): pickle and joblib store it; skops cannot, and says so.
"""

import torch
from torch import nn

from ._network import ACTIVATIONS, make_mlp


class TorchModule:
    """A network other than the perceptron: torch code, which pickle and joblib store (through
    torch's own pickling) and skops, by design, does not; asked for its state, it says so."""

    def __init__(self, module):
        self.module = module

    def __reduce_ex__(self, protocol):  # pickle, joblib and copy
        return TorchModule, (self.module,)

    def __getstate__(self):  # skops (pickle and copy never ask: see __reduce_ex__)
        raise TypeError(
            f"skops cannot store the network {type(self.module).__name__}, a torch module given "
            f"as `module` (loading one runs its code); only the default network (module=None) "
            f"is stored as plain arrays. Save this estimator with pickle or joblib.")


class TensorState:
    """A torch tensor as a numpy array (on the host)."""

    def __init__(self, tensor):
        self.array = tensor.detach().cpu().numpy()

    def tensor(self):
        return torch.from_numpy(self.array.copy())


class ItemsState:
    """A dict with keys skops cannot store (tuples), as its ``(key, value)`` pairs."""

    def __init__(self, items):
        self.items = items


class NetworkState:
    """The multilayer perceptron of :func:`skfair._network.make_mlp`: its layer ``widths``
    (inputs, hidden layers, output), ``activation`` and weights (numpy arrays by name)."""

    def __init__(self, widths, activation, module):
        self.widths, self.activation, self.training = widths, activation, module.training
        self.weights = {name: value.detach().cpu().numpy()
                        for name, value in module.state_dict().items()}

    def module(self):
        # (built without drawing from torch's global generator: loading a model must not
        # change the random numbers a user draws next; the weights are overwritten anyway)
        with torch.random.fork_rng(devices=[]):
            module = make_mlp(self.widths[0], self.widths[1:-1], self.activation)
        module.load_state_dict({name: torch.from_numpy(value.copy())
                                for name, value in self.weights.items()})
        return module.train(self.training)


def plain(value):
    """``value`` with its tensors, tuple-keyed dicts and perceptrons (in dicts, lists and
    tuples, at any depth) replaced by their states; the rest as it is."""
    if isinstance(value, torch.Tensor):
        return TensorState(value)
    if isinstance(value, nn.Module):
        shape = _perceptron_shape(value)
        return TorchModule(value) if shape is None else NetworkState(*shape, value)
    if type(value) is dict:
        if all(type(key) in (str, int) for key in value):
            return {key: plain(item) for key, item in value.items()}
        return ItemsState([(key, plain(item)) for key, item in value.items()])
    if type(value) in (list, tuple):
        return type(value)(plain(item) for item in value)
    return value


def restored(value):
    """The inverse of :func:`plain`."""
    if isinstance(value, TensorState):
        return value.tensor()
    if isinstance(value, NetworkState):
        return value.module()
    if isinstance(value, TorchModule):
        return value.module
    if isinstance(value, ItemsState):
        return {key: restored(item) for key, item in value.items}
    if type(value) is dict:
        return {key: restored(item) for key, item in value.items()}
    if type(value) in (list, tuple):
        return type(value)(restored(item) for item in value)
    return value


def _perceptron_shape(module):
    """``(widths, activation)`` of ``module`` when it is a network that
    :func:`skfair._network.make_mlp` builds (same layers, every parameter trainable), else
    None."""
    if not (isinstance(module, nn.Sequential) and len(module)
            and isinstance(module[0], nn.Linear)):
        return None
    linear = [layer for layer in module if isinstance(layer, nn.Linear)]
    widths = [linear[0].in_features] + [layer.out_features for layer in linear]
    activation = next((name for name, kind in ACTIVATIONS.items()
                       if len(module) > 1 and type(module[1]) is kind), "relu")
    with torch.random.fork_rng(devices=[]):  # (saving must not move torch's generator)
        reference = make_mlp(widths[0], widths[1:-1], activation)
    if repr(reference) != repr(module) or not all(
            p.requires_grad for p in module.parameters()):
        return None
    return widths, activation
