"""Input conventions (common.core.conventions): each library's preprocessing, applied by the
project's one NumPy function, against the library's own function on real photographs that ship
inside installed packages (matplotlib's sample data); what presets and formats name; and the
convention and labels that resnet-convert records with a file."""
from __future__ import annotations

import json
from pathlib import Path

import matplotlib
import numpy as np
import pytest
from PIL import Image

from common.commands import convert
from common.core.conventions import (CONVENTIONS, IMAGENET_MEAN, IMAGENET_STD, ConventionError,
                                     load_image, normalise)
from common.core.init import init_weights
from common.core.presets import CONVENTION_OF, convention_of
from common.core.spec import PRESETS, get_spec
from common.core.weights import load_weights, save_weights
from common.formats.metadata import read_meta

SAMPLES = Path(matplotlib.get_data_path()) / "sample_data"
PHOTOS = {"grace_hopper": SAMPLES / "grace_hopper.jpg",  # 512 x 600 JPEG
          "present": SAMPLES / "Minduka_Present_Blue_Pack.png"}  # 128 x 128 RGBA PNG


@pytest.fixture(scope="module", params=sorted(PHOTOS))
def photo(request) -> np.ndarray:
    """A real photograph as a 1 x H x W x 3 uint8 RGB batch."""
    with Image.open(PHOTOS[request.param]) as image:
        return np.asarray(image.convert("RGB"))[None]


@pytest.mark.parametrize("name, module", [("caffe", "resnet"), ("tf", "resnet_v2")])
def test_keras_conventions_equal_keras_preprocess_input(photo, name, module):
    """keras.applications.resnet (caffe: BGR, mean subtracted) and resnet_v2 (tf: [-1, 1]):
    the same float32 values, bit for bit."""
    import importlib
    keras_module = importlib.import_module(f"keras.applications.{module}")
    theirs = np.asarray(keras_module.preprocess_input(photo.astype(np.float32)))
    ours = normalise(photo, name).transpose(0, 2, 3, 1)
    assert theirs.dtype == ours.dtype == np.float32
    np.testing.assert_array_equal(ours, theirs)


def test_torchvision_convention_equals_its_documented_normalisation(photo):
    """ToTensor (x / 255) then Normalize(mean, std) with torchvision's documented ImageNet
    constants, in float64: equal to float32 rounding."""
    x = photo.astype(np.float64) / 255
    expected = ((x - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225]))
    ours = normalise(photo, "torchvision")
    assert ours.shape == (1, 3, *photo.shape[1:3]) and ours.dtype == np.float32
    np.testing.assert_allclose(ours, expected.transpose(0, 3, 1, 2), rtol=0, atol=1e-6)
    assert (IMAGENET_MEAN, IMAGENET_STD) == ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def test_keras_resize_equals_keras_load_img():
    """caffe and tf resize as keras.utils.load_img(target_size=(224, 224)) (nearest)."""
    from keras.utils import img_to_array, load_img
    theirs = img_to_array(load_img(PHOTOS["grace_hopper"], target_size=(224, 224)))
    for name in ("caffe", "tf"):
        ours = load_image(PHOTOS["grace_hopper"], name)
        assert ours.shape == (1, 224, 224, 3)
        np.testing.assert_array_equal(ours[0].astype(np.float32), theirs)


def test_torchvision_resize_keeps_the_ratio_then_crops_the_centre():
    """Resize(256): the 512 x 600 photo becomes 256 x 300; CenterCrop(224) starts at (16, 38)
    (torchvision's rounding of (256 - 224) / 2 and (300 - 224) / 2)."""
    with Image.open(PHOTOS["grace_hopper"]) as image:
        expected = np.asarray(image.convert("RGB").resize((256, 300), Image.BILINEAR)
                              .crop((16, 38, 240, 262)))
    np.testing.assert_array_equal(load_image(PHOTOS["grace_hopper"], "torchvision")[0], expected)


def test_d2l_convention_is_grayscale_in_unit_range():
    with Image.open(PHOTOS["grace_hopper"]) as image:
        gray = np.asarray(image.convert("L").resize((96, 96), Image.BILINEAR))
    x = normalise(load_image(PHOTOS["grace_hopper"], "d2l"), "d2l")
    assert x.shape == (1, 1, 96, 96)
    np.testing.assert_allclose(x[0, 0], gray / 255, rtol=0, atol=1e-7)


def test_every_preset_names_a_convention_of_its_input_channels():
    assert set(CONVENTION_OF) == set(PRESETS)
    for name, spec in PRESETS.items():
        assert CONVENTIONS[CONVENTION_OF[name]].channels == spec.in_channels, name
    assert [CONVENTION_OF[n] for n in ("resnet50", "keras_resnet50", "keras_resnet50_v2",
                                       "gluon_resnet50_v2", "d2l_resnet18", "cifar_resnet20")] \
        == ["torchvision", "caffe", "tf", "torchvision", "d2l", "cifar"]
    assert convention_of(get_spec("d2l_resnet18", in_channels=3)) == "cifar"


def test_every_library_format_names_the_convention_of_its_presets():
    """torchvision, keras, gluon: what the library's files expect is the preset's convention."""
    named = {name: fmt for name, fmt in convert.FORMATS.items()
             if fmt.convention(get_spec("resnet18")) is not None}
    assert {"torchvision", "keras", "gluon"} <= set(named)
    for arch in ("resnet18", "keras_resnet50", "keras_resnet101_v2", "gluon_resnet18_v2"):
        fmt = {"k": "keras", "g": "gluon", "r": "torchvision"}[arch[0]]
        assert named[fmt].convention(get_spec(arch)) == CONVENTION_OF[arch], arch


def test_convert_records_convention_and_labels_in_metadata_or_a_sidecar(tmp_path):
    """A .safetensors keeps them in its header (its tensors unchanged); a .pth in a sidecar;
    a conversion carries them on; --convention overrides."""
    spec = get_spec("cifar_resnet20")
    weights = init_weights(spec, 0)
    src = save_weights(weights, tmp_path / "a.safetensors")
    (tmp_path / "labels.txt").write_text("".join(f"name {i}\n" for i in range(10)))
    assert convert.main([str(src), str(tmp_path / "b.safetensors"), "--arch", spec.name,
                         "--labels", str(tmp_path / "labels.txt")]) == 0
    meta = read_meta(tmp_path / "b.safetensors")
    assert meta["convention"] == CONVENTIONS["cifar"] and meta["labels"][3] == "name 3"
    back = load_weights(tmp_path / "b.safetensors", spec)
    assert all(np.array_equal(back[k], weights[k]) for k in weights)
    assert convert.main([str(tmp_path / "b.safetensors"), str(tmp_path / "c.pth"),
                         "--arch", spec.name, "--convention", "torchvision"]) == 0
    side = json.loads((tmp_path / "c.pth.resnet3.json").read_text())
    assert side["convention"]["name"] == "torchvision" and side["labels"][9] == "name 9"
    assert convert.main([str(tmp_path / "c.pth"), str(tmp_path / "d.npz"),
                         "--arch", spec.name]) == 0
    assert read_meta(tmp_path / "d.npz")["convention"] == CONVENTIONS["torchvision"]


def test_damaged_metadata_is_one_clear_error(tmp_path):
    path = tmp_path / "w.npz"
    save_weights(init_weights(get_spec("cifar_resnet20"), 0), path)
    (tmp_path / "w.npz.resnet3.json").write_text('{"convention": {"name": "x", "color": "CMYK"}}')
    with pytest.raises(ConventionError, match=r"metadata file .*w.npz.resnet3.json: convention"):
        read_meta(path)
