"""The evaluation's Inception-v3 networks against the reference implementations, on identical weights.

The reference modules are imported from their registry wheels (downloaded without dependencies into a
temporary folder): torch-fidelity's ``feature_extractor_inceptionv3.py`` (needs no torchvision) and
torchvision's ``models/inception.py`` (pure Python; its package ``__init__`` that loads the C++ ops is
never run). Weights are random; nothing is downloaded from a model hub.
"""

from __future__ import annotations

import hashlib
import importlib
import subprocess
import sys
import types
import zipfile
from pathlib import Path

import pytest
import torch

from s2s.io import S2SError
from s2s.metrics import inception
from s2s.metrics.features import load_feature_extractor
from s2s.metrics.inception import (
    FID_SPEC,
    IMAGENET_SPEC,
    SOURCES,
    build_random_inception,
    convert_original,
    load_inception,
)

TORCH_FIDELITY = "torch-fidelity==0.4.0"
TORCHVISION = "torchvision==0.29.1"


def _wheel(requirement: str, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q", "-d", str(folder),
         requirement],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    wheels = list(folder.glob("*.whl"))
    if done.returncode != 0 or not wheels:
        pytest.skip(
            f"could not download {requirement} from the package registry: {done.stderr.strip()[-200:]}"
        )
    return wheels[0]


def _import_from_wheel(wheel: Path, folder: Path, package: str, module: str, subpackages=()):
    """Import ``module`` from the wheel's files with ``package`` (and ``subpackages``) as bare namespaces,
    so their ``__init__`` (torch-fidelity's imports torchvision; torchvision's loads C++ ops) never runs."""
    with zipfile.ZipFile(wheel) as zf:
        zf.extractall(folder, members=[n for n in zf.namelist() if n.endswith(".py")])
    saved = {k: v for k, v in sys.modules.items() if k == package or k.startswith(package + ".")}
    for name in saved:
        del sys.modules[name]
    for name in (package, *subpackages):
        bare = types.ModuleType(name)
        bare.__path__ = [str(folder / name.replace(".", "/"))]
        sys.modules[name] = bare
    try:
        return importlib.import_module(module)
    finally:
        # The imported module keeps its own references; the process keeps its own view of the package.
        for name in [k for k in sys.modules if k == package or k.startswith(package + ".")]:
            del sys.modules[name]
        sys.modules.update(saved)


@pytest.fixture(scope="module")
def torch_fidelity_inception(tmp_path_factory):
    root = tmp_path_factory.mktemp("torch_fidelity")
    wheel = _wheel(TORCH_FIDELITY, root / "wheel")
    return _import_from_wheel(
        wheel, root / "src", "torch_fidelity", "torch_fidelity.feature_extractor_inceptionv3"
    )


@pytest.fixture(scope="module")
def torchvision_inception(tmp_path_factory):
    root = tmp_path_factory.mktemp("torchvision")
    wheel = _wheel(TORCHVISION, root / "wheel")
    return _import_from_wheel(
        wheel,
        root / "src",
        "torchvision",
        "torchvision.models.inception",
        subpackages=("torchvision.models",),
    )


def _images(n: int, seed: int, size=(40, 56)) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, *size), generator=gen, dtype=torch.uint8)


def _close(ours: torch.Tensor, ref: torch.Tensor) -> None:
    # float32 noise of two summation orders over ~100 layers; the outputs span ~10 units.
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-5 * float(ref.abs().max()))


def test_fid_inception_equals_torch_fidelity_on_the_same_weights(
    torch_fidelity_inception, tmp_path, monkeypatch, one_torch_thread
):
    ref_module = torch_fidelity_inception
    assert SOURCES[FID_SPEC]["url"] == ref_module.URL_INCEPTION_V3
    path = build_random_inception(tmp_path / "fid.safetensors", FID_SPEC, seed=3)
    ours = load_inception(str(path))
    requested = []

    def weights_from_url(url, progress=True):  # the reference's only way to its weights, without a pickle
        requested.append(url)
        return {k: v.clone() for k, v in ours.state_dict().items()}

    monkeypatch.setattr(ref_module, "load_state_dict_from_url", weights_from_url)
    ref = ref_module.FeatureExtractorInceptionV3(FID_SPEC, ["2048", "logits_unbiased", "logits"])
    assert requested == [SOURCES[FID_SPEC]["url"]]
    # Same parameter names and shapes as the reference, so the published file converts 1:1.
    assert {k: v.shape for k, v in ref.state_dict().items()} == {
        k: v.shape for k, v in ours.state_dict().items()
    }

    for images in (_images(2, 0), _images(1, 1, size=(299, 299)), _images(1, 2, size=(512, 384))):
        pool, unbiased, logits = ref(images)
        out = ours(images)
        _close(out["pool"], pool)
        _close(out["logits_unbiased"], unbiased)
        _close(out["logits"], logits)

    x = _images(2, 4).float()
    torch.testing.assert_close(
        inception.resize_bilinear_tf1(x, 299),
        ref_module.interpolate_bilinear_2d_like_tensorflow1x(x, size=(299, 299), align_corners=False),
        rtol=0, atol=1e-4,
    )  # fmt: skip


def test_imagenet_inception_equals_torchvision_on_the_same_weights(
    torchvision_inception, tmp_path, one_torch_thread
):
    tv = torchvision_inception
    weights = tv.Inception_V3_Weights.IMAGENET1K_V1
    assert weights.url == SOURCES[IMAGENET_SPEC]["url"]
    path = build_random_inception(tmp_path / "imagenet.safetensors", IMAGENET_SPEC, seed=4)
    ours = load_inception(str(path))
    # What inception_v3(weights=IMAGENET1K_V1) builds (aux head, transform_input on), without the download.
    ref = tv.Inception3(num_classes=1000, aux_logits=True, transform_input=True, init_weights=False)
    ref.load_state_dict(ours.state_dict(), strict=True)
    ref.eval()
    fc = ref.fc

    from PIL import Image

    functional = tv.ImageClassification.forward.__globals__["F"]  # torchvision.transforms.functional
    for images in (_images(2, 5), _images(1, 6, size=(512, 384))):  # up- and downsampled
        x = torch.nn.functional.interpolate(images.float(), (299, 299), mode="bilinear", antialias=True) / 255
        # ignite's tutorial preprocessing: PIL's bilinear resize to 299, then ToTensor's [0, 1].
        for image, resized in zip(images, x, strict=True):
            pil = Image.fromarray(image.permute(1, 2, 0).numpy()).resize((299, 299), Image.BILINEAR)
            torch.testing.assert_close(resized, functional.to_tensor(pil), rtol=0, atol=1.01 / 255)
        out = ours(images)
        with torch.no_grad():
            ref.fc = fc
            logits = ref(x)  # ignite's InceptionModel(return_features=False) is softmax of this
            ref.fc = torch.nn.Identity()  # ignite's return_features=True
            pool = ref(x)
        _close(out["logits"], logits)
        _close(out["pool"], pool)
        torch.testing.assert_close(out["logits"].softmax(-1), logits.softmax(-1), rtol=1e-4, atol=1e-6)


def _fake_original(net: torch.nn.Module, path: Path, seed: int) -> dict:
    """A state dict with the published key names and random values, saved the way the originals are
    (``torch.save``; no BatchNorm step counters, as in checkpoints from before torch 0.4.1)."""
    gen = torch.Generator().manual_seed(seed)
    state = {
        k: torch.randn(v.shape, generator=gen) if v.is_floating_point() else v
        for k, v in net.state_dict().items()
        if not k.endswith("num_batches_tracked")
    }
    torch.save(state, path)
    return state


@pytest.mark.parametrize("spec", [FID_SPEC, IMAGENET_SPEC])
def test_converter_loads_the_original_strictly_and_records_its_origin(spec, tmp_path, monkeypatch):
    original = tmp_path / "original.pth"
    state = _fake_original(inception.ARCHITECTURES[spec](), original, seed=7)
    out = convert_original(original, spec, tmp_path / f"{spec}.safetensors", source_url=SOURCES[spec]["url"])
    meta = inception.inception_metadata(out)
    assert meta["source_url"] == SOURCES[spec]["url"] and meta["architecture"] == spec
    assert meta["source_sha256"] == hashlib.sha256(original.read_bytes()).hexdigest()
    net = load_feature_extractor(str(out)).cpu()
    assert net.name == spec
    for key, value in state.items():
        torch.testing.assert_close(net.state_dict()[key], value, rtol=0, atol=0)

    if spec != FID_SPEC:
        return  # the prefetch path below is the same for both networks
    # prefetch: download (hash prefix checked there), convert, keep only the safetensors file.
    def download(url, dst, hash_prefix=None, progress=True):
        assert url == SOURCES[spec]["url"] and hash_prefix == SOURCES[spec]["hash_prefix"]
        Path(dst).write_bytes(original.read_bytes())

    monkeypatch.setenv("S2S_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(torch.hub, "download_url_to_file", download)
    record = inception.fetch_inception(spec)
    assert record["source_sha256"] == meta["source_sha256"]
    assert sorted(p.name for p in (tmp_path / "cache" / "inception").iterdir()) == [f"{spec}.safetensors"]
    assert load_inception(spec).state_dict().keys() == net.state_dict().keys()


def test_converter_refuses_a_state_dict_that_does_not_match(tmp_path):
    original = tmp_path / "original.pth"
    state = _fake_original(inception.FIDInceptionV3(), original, seed=8)
    state["fc.weight"] = state["fc.weight"][:1000]  # torchvision's 1000-class head on the 1008-class net
    torch.save(state, original)
    with pytest.raises(S2SError, match="not the inception-v3-compat weights") as info:
        convert_original(original, FID_SPEC, tmp_path / "out.safetensors")
    assert "\n" not in str(info.value) and not (tmp_path / "out.safetensors").exists()

    del state["fc.weight"]
    torch.save(state, original)
    with pytest.raises(S2SError, match="fc.weight"):
        convert_original(original, FID_SPEC, tmp_path / "out.safetensors")

    # The ImageNet file into the FID network: same trunk, but an aux head and 1000 classes.
    _fake_original(inception.ImageNetInceptionV3(), original, seed=9)
    with pytest.raises(S2SError, match="not the inception-v3-compat weights"):
        convert_original(original, FID_SPEC, tmp_path / "out.safetensors")


def test_spec_names_read_only_the_converted_cache_and_say_how_to_fill_it(tmp_path, monkeypatch):
    monkeypatch.setenv("S2S_CACHE", str(tmp_path / "cache"))
    for spec in (FID_SPEC, IMAGENET_SPEC):
        with pytest.raises(S2SError, match="snakemake prefetch") as info:
            load_feature_extractor(spec)
        message = str(info.value)
        assert (
            "\n" not in message and str(tmp_path / "cache" / "inception" / f"{spec}.safetensors") in message
        )

    build_random_inception(inception.cached_weights(FID_SPEC), FID_SPEC, seed=1)
    net = load_feature_extractor(FID_SPEC)
    assert (net.name, net.num_classes, net.pool_dim, net.input_size) == (FID_SPEC, 1008, 2048, 299)
    with pytest.raises(S2SError, match="snakemake prefetch"):
        load_feature_extractor(IMAGENET_SPEC)


def test_random_builder_writes_the_prefetch_format_and_is_deterministic(tmp_path, one_torch_thread):
    a = load_feature_extractor(str(build_random_inception(tmp_path / "a.safetensors", IMAGENET_SPEC, seed=0)))
    assert (a.name, a.num_classes, a.pool_dim) == (IMAGENET_SPEC, 1000, 2048)
    assert inception.inception_metadata(tmp_path / "a.safetensors")["format"] == inception.FORMAT
    same = inception.load_safetensors(
        build_random_inception(tmp_path / "b.safetensors", IMAGENET_SPEC, seed=0)
    )
    other = inception.load_safetensors(
        build_random_inception(tmp_path / "c.safetensors", IMAGENET_SPEC, seed=1)
    )
    for key, value in a.state_dict().items():
        torch.testing.assert_close(same[key], value.cpu(), rtol=0, atol=0)
    assert not torch.equal(other["fc.weight"], same["fc.weight"])
    out = a(_images(2, 0))
    torch.testing.assert_close(out["logits"] - out["logits_unbiased"], a.fc.bias.expand(2, -1))
    # Random, but not degenerate: the softmax is peaked (an IS far from 1 is possible).
    assert float(out["logits"].softmax(-1).max()) > 0.5
