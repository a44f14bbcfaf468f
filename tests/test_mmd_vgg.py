"""The ``vgg`` backbone: torchvision layout, ImageNet weights from a file, the image form."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from emobridge.errors import ConfigError, EmobridgeWarning
from emobridge.features.extractors.logmel import LogMel
from emobridge.methods import build_method
from emobridge.methods.neural import NeuralMethod
from emobridge.models import build_backbone
from emobridge.models.vgg import IMAGENET_MEAN, IMAGENET_STD, VGG, frames_to_images
from tests.conftest import voiced_tone
from tests.test_methods_baselines import gaussians

torch.set_num_threads(1)

TINY = {"depth": 11, "width": 0.125, "image_size": 32, "fc_dim": 8, "pool_size": 1,
        "dropout": 0.0}

#: torchvision's vgg16 state-dict keys (``torchvision.models.vgg16().state_dict()``).
TORCHVISION_VGG16 = [f"features.{i}.{p}" for i in (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24,
                                                   26, 28) for p in ("weight", "bias")] + [
    f"classifier.{i}.{p}" for i in (0, 3, 6) for p in ("weight", "bias")]


def _quiet_build(params, input_dim=16, pretrained=True):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", EmobridgeWarning)
        return build_backbone("vgg", input_dim, True, params, pretrained=pretrained)


@pytest.mark.parametrize("depth,convs", [(11, 8), (13, 10), (16, 13), (19, 16)])
def test_layout_and_keys_follow_torchvision(depth, convs):
    with torch.device("meta"):
        model = VGG(depth=depth)
    n_convs = sum(isinstance(m, torch.nn.Conv2d) for m in model.features)
    assert n_convs == convs
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert shapes["classifier.0.weight"] == (4096, 512 * 7 * 7)
    assert model.output_dim == 4096
    if depth == 16:  # every torchvision key but the 1000-class layer, and nothing else
        assert sorted(shapes) == sorted(k for k in TORCHVISION_VGG16
                                        if not k.startswith("classifier.6"))


def test_random_start_is_announced():
    with pytest.warns(EmobridgeWarning, match="random weights"):
        build_backbone("vgg", 16, True, TINY)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        build_backbone("vgg", 16, True, TINY, pretrained=False)  # restoring: silent


def test_weights_file_loads_and_drops_the_imagenet_classifier(tmp_path):
    source = _quiet_build(TINY)
    state = dict(source.state_dict())
    state["classifier.6.weight"] = torch.zeros(1000, 8)  # the ImageNet head is ignored
    state["classifier.6.bias"] = torch.zeros(1000)
    path = tmp_path / "vgg11.pth"
    torch.save(state, path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loaded = build_backbone("vgg", 16, True, {**TINY, "weights": str(path)})
    for key, value in source.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    with pytest.warns(EmobridgeWarning, match="classifier.0"):
        wider = build_backbone("vgg", 16, True, {**TINY, "fc_dim": 12, "weights": str(path)})
    assert torch.equal(wider.features[0].weight, source.features[0].weight)


def test_bad_weights_files_are_config_errors(tmp_path):
    path = tmp_path / "w.pth"
    torch.save(_quiet_build(TINY).state_dict(), path)
    with pytest.raises(ConfigError, match="convolutions do not fit"):
        build_backbone("vgg", 16, True, {**TINY, "depth": 13, "weights": str(path)})
    with pytest.raises(ConfigError, match="No such file|not found|no such"):
        build_backbone("vgg", 16, True, {**TINY, "weights": str(tmp_path / "missing.pth")})
    (tmp_path / "junk.pth").write_bytes(b"not a torch file")
    with pytest.raises(ConfigError, match="not a torch state dict"):
        build_backbone("vgg", 16, True, {**TINY, "weights": str(tmp_path / "junk.pth")})
    torch.save({"a": 1}, tmp_path / "obj.pth")
    with pytest.raises(ConfigError, match="state dict of tensors"):
        build_backbone("vgg", 16, True, {**TINY, "weights": str(tmp_path / "obj.pth")})


def test_bad_sizes_are_config_errors():
    for bad in ({"depth": 12}, {"image_size": 16}, {"image_size": [32, 32, 3]},
                {"width": 0.0}):
        with pytest.raises(ConfigError, match="vgg"):
            build_backbone("vgg", 16, True, {**TINY, **bad})
    with pytest.raises(ConfigError, match="frame sequences"):
        build_backbone("vgg", 16, False, TINY)


def test_images_are_the_log_mel_as_a_picture():
    wave = voiced_tone(0.6)
    frames = LogMel("nnpm").extract(wave, 16_000)
    image = frames_to_images(torch.as_tensor(frames)[None], None, (48, 40))[0].numpy()
    assert image.shape == (3, 48, 40)
    mean = np.array(IMAGENET_MEAN)[:, None, None]
    std = np.array(IMAGENET_STD)[:, None, None]
    unit = image * std + mean  # back to the [0, 1] picture: the same in the three channels
    np.testing.assert_allclose(unit[0], unit[1], atol=1e-5)
    assert unit.min() >= -1e-5 and unit.max() <= 1 + 1e-5 and unit.max() > 0.9
    # low frequencies at the bottom: a 150 Hz harmonic tone is brightest in the lower half
    assert unit[0, 24:].mean() > unit[0, :24].mean()
    # padding frames are ignored: the mask selects the real ones
    padded = torch.zeros(1, frames.shape[0] + 7, frames.shape[1])
    padded[0, :frames.shape[0]] = torch.as_tensor(frames)
    mask = torch.arange(padded.shape[1])[None] < frames.shape[0]
    np.testing.assert_allclose(frames_to_images(padded, mask, (48, 40))[0].numpy(), image,
                               atol=1e-6)


def test_a_method_trains_saves_and_reloads_a_vgg_without_its_weights_file(tmp_path):
    path = tmp_path / "imagenet.pth"
    torch.save(_quiet_build(TINY).state_dict(), path)
    source = gaussians(24, 0, frames=True, dims=16)
    method = build_method("source_only", backbone="vgg",
                          backbone_params={**TINY, "weights": str(path)}, normalise="none",
                          epochs=1, batch_size=8, device="cpu")
    method.fit(source)
    method.save(tmp_path / "model")
    path.unlink()  # the saved model carries its own weights
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loaded = NeuralMethod.load(tmp_path / "model")
    np.testing.assert_allclose(loaded.predict_proba(source), method.predict_proba(source),
                               atol=1e-6)
