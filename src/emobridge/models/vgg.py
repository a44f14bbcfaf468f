"""VGG (Simonyan & Zisserman, 2015) on log-mel spectrogram images: the network of Baklouti et
al.'s domain-adaptive transfer (VGG16, ImageNet weights, fine-tuned on mel-spectrogram
images).

The layer lists and the module names follow torchvision's ``VGG`` (``features.N``,
``classifier.0`` / ``classifier.3``), so a torchvision ImageNet state dict
(``vgg16-397923af.pth``...) loads with ``weights=/path.pth`` (read with
``torch.load(weights_only=True)``; torchvision itself is not needed). Its last layer
(``classifier.6``, the 1000 ImageNet classes) is dropped: the emotion classifier of
:class:`~emobridge.models.EmotionClassifier` replaces it, so the backbone's embedding is the
output of the second FC block (``fc_dim`` wide) and "the first FC layer" of the paper is
``classifier.0`` (``domain_loss_layer="first_fc"``; ``"classifier.1"`` after its ReLU).

Input: log-mel frames ``(batch, frames, n_mels)`` with their mask -- the
``logmel:preset=nnpm`` features. Each utterance's real frames become the image the log-mel
extractor's ``image_size`` option writes (rows = mel bins, low frequencies at the bottom;
min-max scaled to [0, 1] per utterance; resized bilinearly to ``image_size``; repeated to 3
channels; ImageNet mean / std), built inside the model because a training batch holds frame
matrices, not images. Use ``normalise="none"`` on the method to get exactly the extractor's
image; a standardised input changes the relative level of the mel bins.

CPU budgets: ``depth`` 11 / 13 / 16 / 19, a channel ``width`` multiplier, a smaller
``image_size`` (at least 32: five 2x2 poolings), ``pool_size`` (torchvision's 7x7 adaptive
pooling before the FC layers; 1 removes most of the first FC layer's weights) and ``fc_dim``.
ImageNet weights need ``width=1`` (convolutions); FC layers whose shape differs
(``fc_dim`` != 4096 or ``pool_size`` != 7) keep their random initialisation, with a warning.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from emobridge.errors import ConfigError, EmobridgeWarning, describe_os_error

#: ImageNet channel statistics (torchvision's): the images are normalised with them.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "VGG", "VGG_CONFIGS", "frames_to_images"]

#: torchvision's configurations ("M": 2x2 max-pooling), by depth.
VGG_CONFIGS: dict[int, list[int | str]] = {
    11: [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    13: [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    16: [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512,
         "M"],
    19: [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512,
         512, 512, 512, "M"],
}

#: Smallest image side: five 2x2 poolings leave one pixel.
MIN_IMAGE_SIDE = 32


def frames_to_images(x: torch.Tensor, mask: torch.Tensor | None,
                     size: tuple[int, int]) -> torch.Tensor:
    """Log-mel frames ``(batch, frames, mels)`` -> ImageNet-normalised images
    ``(batch, 3, H, W)``, one per utterance from its real frames (the log-mel extractor's
    image form, see the module docstring)."""
    images = []
    for i in range(x.shape[0]):
        n = int(mask[i].sum()) if mask is not None else x.shape[1]
        img = x[i, :max(n, 1)].T.flip(0)  # rows = mel bins, low frequencies at the bottom
        lo, hi = img.min(), img.max()
        img = (img - lo) / (hi - lo) if bool(hi > lo) else torch.zeros_like(img)
        shrink = size[0] < img.shape[0] or size[1] < img.shape[1]
        images.append(F.interpolate(img[None, None], size=size, mode="bilinear",
                                    align_corners=False, antialias=shrink)[0, 0].clamp(0, 1))
    batch = torch.stack(images)[:, None].expand(-1, 3, -1, -1)
    mean = torch.tensor(IMAGENET_MEAN, device=x.device, dtype=x.dtype)[:, None, None]
    std = torch.tensor(IMAGENET_STD, device=x.device, dtype=x.dtype)[:, None, None]
    return (batch - mean) / std


def _image_size(image_size: int | Sequence[int]) -> tuple[int, int]:
    size = [image_size] * 2 if isinstance(image_size, int) else list(image_size)
    if len(size) != 2 or any(not isinstance(s, int) or s < MIN_IMAGE_SIDE for s in size):
        raise ConfigError(f"vgg: image_size must be an int or [H, W], each >= "
                          f"{MIN_IMAGE_SIDE}; got {image_size!r}")
    return size[0], size[1]


class VGG(nn.Module):
    """VGG on log-mel images; see the module docstring.

    Parameters
    ----------
    input_dim:
        Mel bins of the input frames.
    depth:
        11, 13, 16 (default, the paper's) or 19.
    image_size:
        Image side (or ``[H, W]``) the spectrogram is resized to (224: ImageNet's).
    width:
        Multiplier of every convolution's channels (1: torchvision's; ImageNet weights
        need 1).
    fc_dim:
        Width of the two FC layers (the embedding size).
    pool_size:
        Side of the adaptive average pooling before the FC layers (torchvision: 7).
    dropout:
        Dropout after each FC layer.
    batch_norm:
        ``vgg*_bn``: batch normalisation after each convolution (its weights files differ).
    weights:
        Path of a torchvision ImageNet state dict of the same ``depth`` / ``batch_norm``;
        ``None``: random initialisation (torchvision's scheme), announced once as an
        :class:`~emobridge.errors.EmobridgeWarning`.
    """

    def __init__(self, input_dim: int = 128, depth: int = 16,
                 image_size: int | Sequence[int] = 224, width: float = 1.0,
                 fc_dim: int = 4096, pool_size: int = 7, dropout: float = 0.5,
                 batch_norm: bool = False, weights: str | None = None) -> None:
        super().__init__()
        if depth not in VGG_CONFIGS:
            raise ConfigError(f"vgg: depth must be one of {sorted(VGG_CONFIGS)}, got {depth!r}")
        if not width > 0 or fc_dim < 1 or pool_size < 1:
            raise ConfigError(f"vgg: width must be > 0, fc_dim and pool_size >= 1; got "
                              f"{width}, {fc_dim}, {pool_size}")
        self.input_dim = input_dim
        self.image_size = _image_size(image_size)
        self.weights = weights
        layers: list[nn.Module] = []
        channels = 3
        for item in VGG_CONFIGS[depth]:
            if item == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
                continue
            out = max(1, round(int(item) * width))
            layers.append(nn.Conv2d(channels, out, kernel_size=3, padding=1))
            if batch_norm:
                layers.append(nn.BatchNorm2d(out))
            layers.append(nn.ReLU())  # not in place: layer outputs may be captured by hooks
            channels = out
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d((pool_size, pool_size))
        self.classifier = nn.Sequential(
            nn.Linear(channels * pool_size * pool_size, fc_dim), nn.ReLU(), nn.Dropout(dropout),
            nn.Linear(fc_dim, fc_dim), nn.ReLU(), nn.Dropout(dropout))
        self.output_dim = fc_dim
        self._init_random()

    def _init_random(self) -> None:
        """torchvision's initialisation of VGG."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def init_pretrained(self) -> None:
        """Load ``weights`` (or warn that the network starts random). Called by
        :func:`~emobridge.models.build_backbone` for a new model, not when a saved model's
        own weights are about to be restored."""
        if self.weights is None:
            warnings.warn("vgg: no ImageNet weights file given (backbone_params weights="
                          "/path.pth): the network starts from random weights",
                          EmobridgeWarning, stacklevel=2)
            return
        skipped = load_imagenet_weights(self, Path(self.weights))
        if skipped:
            warnings.warn(f"vgg: {self.weights}: layers {skipped} do not have ImageNet's "
                          "shape (fc_dim / pool_size differ) and start from random weights",
                          EmobridgeWarning, stacklevel=2)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        if x.dim() != 3:
            raise ConfigError("vgg: needs log-mel frame sequences (batch, frames, mels)")
        h = self.features(frames_to_images(x, mask, self.image_size))
        return self.classifier(torch.flatten(self.avgpool(h), 1))


def load_imagenet_weights(model: VGG, path: Path) -> list[str]:
    """Copy a torchvision VGG state dict from ``path`` into ``model``; every convolution must
    fit (else :class:`ConfigError`); FC layers that do not fit are left as they are. Returns
    the names of those FC layers."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except OSError as exc:
        raise ConfigError(f"vgg weights: {describe_os_error(exc)}") from None
    except Exception as exc:  # unpickling refused or not a torch file
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ConfigError(f"vgg weights {path}: not a torch state dict ({first})") from None
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise ConfigError(f"vgg weights {path}: not a state dict of tensors")
    own = model.state_dict()
    bad = [k for k in own if k.startswith("features.")
           and (k not in state or tuple(state[k].shape) != tuple(own[k].shape))]
    if bad:
        raise ConfigError(f"vgg weights {path}: convolutions do not fit this VGG (first: "
                          f"{bad[0]}); use the file of the same depth / batch_norm and "
                          "width=1")
    fits = {k: v for k, v in state.items()
            if k in own and tuple(v.shape) == tuple(own[k].shape)}
    model.load_state_dict({**own, **fits})
    return sorted({k.rsplit(".", 1)[0] for k in own if k not in fits
                   and k.startswith("classifier.")})
