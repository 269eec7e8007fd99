"""Small models for the 8×8 digits and 28×28 MNIST images: an MLP and a two-conv CNN.

They are the quick models of the project's tests and demos, not models of a paper; the CNN is
the usual LeNet-like (LeCun et al. 1998) conv–pool–conv–pool–fc–fc stack.

References
----------
LeCun, Y., Bottou, L., Bengio, Y., Haffner, P. (1998). Gradient-based learning applied to
document recognition. Proc. IEEE 86(11).
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

__all__ = ["mlp", "small_cnn"]


def mlp(
    in_features: int = 784,
    hidden: int | Sequence[int] = (256,),
    num_classes: int = 10,
) -> nn.Sequential:
    """Fully connected ReLU network on flattened inputs.

    ``Flatten → [Linear → ReLU] per hidden width → Linear(num_classes)``, all with biases and
    PyTorch default initialisation.

    Parameters
    ----------
    in_features : int, optional
        Flattened input size: 64 for the 8×8 digits, 784 for MNIST. Default 784.
    hidden : int or sequence of int, optional
        Hidden widths (an int is one hidden layer; an empty sequence gives logistic regression).
        Default ``(256,)``.
    num_classes : int, optional
        Output classes. Default 10.

    Returns
    -------
    torch.nn.Sequential
        Maps ``[N, ...]`` with ``in_features`` entries per sample to ``[N, num_classes]``.

    Raises
    ------
    ValueError
        If a size is < 1.
    """
    widths = [hidden] if isinstance(hidden, int) else list(hidden)
    for name, value in [("in_features", in_features), ("num_classes", num_classes)] + [
        ("hidden", w) for w in widths
    ]:
        if value < 1:
            raise ValueError(f"Invalid {name} value: {value}. Must be >= 1.")
    layers: list[nn.Module] = [nn.Flatten()]
    prev = in_features
    for w in widths:
        layers += [nn.Linear(prev, w), nn.ReLU()]
        prev = w
    layers.append(nn.Linear(prev, num_classes))
    return nn.Sequential(*layers)


def small_cnn(
    in_channels: int = 1,
    num_classes: int = 10,
    image_size: int = 28,
    *,
    channels: tuple[int, int] = (32, 64),
    hidden: int = 128,
) -> nn.Sequential:
    """Two conv blocks and two Linear layers for small square images (digits, MNIST).

    ``[Conv3×3(pad 1) → ReLU → MaxPool2] × 2 → Flatten → Linear(hidden) → ReLU →
    Linear(num_classes)``; the spatial side goes ``S → ⌊S/2⌋ → ⌊S/4⌋`` (8 → 2, 28 → 7).

    Parameters
    ----------
    in_channels : int, optional
        Input channels. Default 1.
    num_classes : int, optional
        Output classes. Default 10.
    image_size : int, optional
        Input side ``S`` (>= 4): 8 for the digits, 28 for MNIST. Default 28.
    channels : tuple of int, optional
        Output channels of the two convs. Default ``(32, 64)``.
    hidden : int, optional
        Width of the hidden Linear layer. Default 128.

    Returns
    -------
    torch.nn.Sequential
        Maps ``[N, in_channels, S, S]`` to ``[N, num_classes]``.

    Raises
    ------
    ValueError
        If ``image_size < 4`` or another size is < 1.
    """
    if image_size < 4:
        raise ValueError(f"Invalid image_size value: {image_size}. Must be >= 4.")
    for name, value in [
        ("in_channels", in_channels),
        ("num_classes", num_classes),
        ("channels", min(channels)),
        ("hidden", hidden),
    ]:
        if value < 1:
            raise ValueError(f"Invalid {name} value: {value}. Must be >= 1.")
    c1, c2 = channels
    side = image_size // 2 // 2
    return nn.Sequential(
        nn.Conv2d(in_channels, c1, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(c1, c2, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(c2 * side * side, hidden),
        nn.ReLU(),
        nn.Linear(hidden, num_classes),
    )
