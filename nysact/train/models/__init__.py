"""The models of the NysAct, MAC and AdaAct experiments, in plain PyTorch.

* ``resnet20``, ``resnet32``, ``resnet44``, ``resnet56``, ``resnet110``: CIFAR ResNets with
  option-A shortcuts, input ``[N, 3, 32, 32]``;
* ``densenet121``: CIFAR DenseNet-121 (kuangliu layout), input ``[N, 3, 32, 32]``;
* ``resnet18``, ``resnet50``: ImageNet ResNets in the torchvision layout (v1.5), input
  ``[N, 3, 224, 224]`` (``stem="cifar"`` for the 3×3-stem CIFAR versions);
* ``deit_small``: DeiT-S/16 (ViT, timm layout), input ``[N, 3, 224, 224]``;
* ``deit_small_cifar``: DeiT-S widths with 4-px patches, input ``[N, 3, 32, 32]``;
* ``mlp``: ReLU MLP on flattened inputs ``[N, in_features]``;
* ``small_cnn``: two conv blocks and two Linear layers, input ``[N, C, S, S]`` (digits, MNIST).

:func:`build_model` builds one by name. The package imports nothing from :mod:`nysact.optim` or
:mod:`nysact.curvature`.

References
----------
He, K., Zhang, X., Ren, S., Sun, J. (2016). Deep residual learning for image recognition. CVPR.

Huang, G., Liu, Z., van der Maaten, L., Weinberger, K. Q. (2017). Densely connected
convolutional networks. CVPR.

Dosovitskiy, A., et al. (2021). An image is worth 16x16 words: Transformers for image recognition
at scale. ICLR.

Touvron, H., et al. (2021). Training data-efficient image transformers & distillation through
attention. ICML.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from nysact.train.models.cifar_resnet import (
    CifarBasicBlock,
    CifarResNet,
    OptionAShortcut,
    resnet20,
    resnet32,
    resnet44,
    resnet56,
    resnet110,
)
from nysact.train.models.densenet import DenseBottleneck, DenseNet, Transition, densenet121
from nysact.train.models.imagenet_resnet import (
    Bottleneck,
    ImageNetResNet,
    ResNetBasicBlock,
    resnet18,
    resnet34,
    resnet50,
)
from nysact.train.models.small import mlp, small_cnn
from nysact.train.models.vit import (
    Attention,
    DropPath,
    Mlp,
    PatchEmbed,
    TransformerBlock,
    VisionTransformer,
    deit_small,
    deit_small_cifar,
    deit_tiny_cifar,
    drop_path,
)

__all__ = [
    "MODELS",
    "Attention",
    "Bottleneck",
    "CifarBasicBlock",
    "CifarResNet",
    "DenseBottleneck",
    "DenseNet",
    "DropPath",
    "ImageNetResNet",
    "Mlp",
    "OptionAShortcut",
    "PatchEmbed",
    "ResNetBasicBlock",
    "TransformerBlock",
    "Transition",
    "VisionTransformer",
    "build_model",
    "deit_small",
    "deit_small_cifar",
    "deit_tiny_cifar",
    "densenet121",
    "drop_path",
    "mlp",
    "resnet18",
    "resnet20",
    "resnet32",
    "resnet34",
    "resnet44",
    "resnet50",
    "resnet56",
    "resnet110",
    "small_cnn",
]

#: Model factories by name; each accepts ``num_classes`` as a keyword.
MODELS: dict[str, Callable[..., nn.Module]] = {
    "resnet20": resnet20,
    "resnet32": resnet32,
    "resnet44": resnet44,
    "resnet56": resnet56,
    "resnet110": resnet110,
    "densenet121": densenet121,
    "resnet18": resnet18,
    "resnet50": resnet50,
    "deit_small": deit_small,
    "deit_small_cifar": deit_small_cifar,
    "mlp": mlp,
    "small_cnn": small_cnn,
}


def build_model(name: str, *, num_classes: int, **kwargs: Any) -> nn.Module:
    """Build the model registered as ``name`` in :data:`MODELS`.

    Parameters
    ----------
    name : str
        A key of :data:`MODELS`, e.g. ``"resnet32"``.
    num_classes : int
        Output classes.
    **kwargs
        Further keyword arguments of the factory (e.g. ``drop_path_rate`` for the DeiTs,
        ``zero_init_residual`` for ResNet-18/50, ``in_features`` for the MLP, ``image_size``
        for the small CNN).

    Returns
    -------
    torch.nn.Module
        The freshly initialised model.

    Raises
    ------
    ValueError
        If ``name`` is not registered; the message lists the valid names.
    """
    try:
        factory = MODELS[name]
    except KeyError:
        valid = ", ".join(sorted(MODELS))
        raise ValueError(f"Unknown model {name!r}. Valid models: {valid}.") from None
    return factory(num_classes=num_classes, **kwargs)
