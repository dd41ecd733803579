"""The model registry, the one checkpoint convention, and the torch.hub entry points."""
from __future__ import annotations

import importlib
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

from segblocks.models import create_model, list_models, load_checkpoint, register_model
from segblocks.models.backbones import ResNet50, SwinTransformer, TinyBackbone
from segblocks.models.hrsam import HRSAMEncoder, HRSAMPlusPlusEncoder
from segblocks.models.mask2former import Mask2Former
from segblocks.models.sam import SamDecoder, SamModel, ViTImageEncoder

REPO = Path(__file__).resolve().parents[1]

#: Every preset of the library (the issue's list) and the class it builds.
EXPECTED = {
    "sam_vit_b": SamModel, "sam_tiny": SamModel, "sam_vit_b_encoder": ViTImageEncoder,
    "sam_vit_h_encoder": ViTImageEncoder, "sam_tiny_encoder": ViTImageEncoder, "sam_vit_b_decoder": SamDecoder,
    "sam_tiny_decoder": SamDecoder, "hrsam_vit_b": HRSAMEncoder, "hrsam_pp_vit_b": HRSAMPlusPlusEncoder,
    "hrsam_tiny": HRSAMEncoder, "hrsam_pp_tiny": HRSAMPlusPlusEncoder, "sam_hrsam_vit_b": SamModel,
    "sam_hrsam_pp_vit_b": SamModel, "sam_hrsam_tiny": SamModel, "sam_hrsam_pp_tiny": SamModel,
    "mask2former_r50": Mask2Former, "mask2former_swin_t": Mask2Former, "mask2former_swin_s": Mask2Former,
    "mask2former_tiny": Mask2Former, "proscale_r50_111": Mask2Former, "proscale_r50_222": Mask2Former,
    "proscale_r50_333": Mask2Former, "proscale_swin_t_333": Mask2Former, "proscale_tiny": Mask2Former,
    "resnet50": ResNet50, "swin_tiny": SwinTransformer, "swin_small": SwinTransformer, "tiny_backbone": TinyBackbone,
}
CHEAP = [n for n in EXPECTED if "tiny" in n and not n.startswith(("swin", "mask2former_swin"))]


def test_every_preset_is_registered():
    assert set(EXPECTED) <= set(list_models())
    assert list_models("sam_hrsam*") == ["sam_hrsam_pp_tiny", "sam_hrsam_pp_vit_b", "sam_hrsam_tiny", "sam_hrsam_vit_b"]
    assert list_models() == sorted(list_models())


@pytest.mark.parametrize("name", CHEAP)
def test_create_cheap_models(name):
    model = create_model(name)
    assert isinstance(model, EXPECTED[name])


def test_full_size_configurations_without_building_weights(monkeypatch):
    """Full-size presets: the configurations the papers give, read off the constructors' arguments."""
    seen = {}
    monkeypatch.setattr(ViTImageEncoder, "__init__", lambda self, **kw: (nn.Module.__init__(self), seen.update(vit=kw))[0])
    create_model("sam_vit_b")  # a stub encoder: no ViT-B weights are allocated
    assert seen["vit"]["embed_dim"] == 768 and seen["vit"]["depth"] == 12 and seen["vit"]["global_attn_indexes"] == (2, 5, 8, 11)
    decoder = create_model("sam_vit_b_decoder")
    assert decoder.embed_dim == 256 and decoder.mask_decoder.transformer_dim == 256


def test_mask2former_presets_take_num_classes():
    model = create_model("proscale_tiny", num_classes=7)
    assert model.num_classes == 7 and model.pixel_decoder.encoder.layers_per_stage == (3, 3, 3)
    assert model.pixel_decoder.encoder.token_recalibration is not None
    m2f = create_model("mask2former_tiny", num_classes=3)
    assert m2f.pixel_decoder.encoder.layers_per_stage == (0, 0, 6) and m2f.pixel_decoder.encoder.token_recalibration is None


def test_register_model_adds_the_checkpoint_convention_and_warns_on_overwrite(tmp_path):
    def _toy_model(*, width: int = 3) -> nn.Module:
        return nn.Linear(width, 2)

    _toy_model.__name__ = "toy_model_for_registry_test"
    entry = register_model(_toy_model)
    import inspect

    params = inspect.signature(entry).parameters
    assert list(params) == ["width", "checkpoint", "checkpoint_prefix", "strict"]
    source = entry(width=4)
    torch.save({"state_dict": {f"net.{k}": v for k, v in source.state_dict().items()}}, tmp_path / "w.ckpt")
    loaded = create_model("toy_model_for_registry_test", width=4, checkpoint=tmp_path / "w.ckpt", checkpoint_prefix="net.")
    torch.testing.assert_close(loaded.weight, source.weight)
    with pytest.warns(UserWarning, match="overwriting"):
        register_model(_toy_model)
    with pytest.raises(ValueError, match="unknown model"):
        create_model("no_such_model")
    with pytest.raises(TypeError, match="must not define"):
        def bad(*, checkpoint=None):
            return nn.Linear(1, 1)
        register_model(bad)


# --------------------------------------------------------------------------- checkpoint convention
def test_strict_by_default_with_a_report_otherwise(tmp_path):
    state = TinyBackbone().state_dict()
    del state["stem.0.weight"]
    state["extra.weight"] = torch.zeros(3)
    path = tmp_path / "partial.pth"
    torch.save(state, path)
    with pytest.raises(ValueError, match=r"partial.pth.*1 missing keys \['stem.0.weight'\].*extra.weight"):
        create_model("tiny_backbone", checkpoint=path)
    model = create_model("tiny_backbone", checkpoint=path, strict=False)
    assert model.checkpoint_report.missing_keys == ["stem.0.weight"]
    assert model.checkpoint_report.unexpected_keys == ["extra.weight"]
    torch.testing.assert_close(model.stages[0][0][0].weight, state["stages.0.0.0.weight"], rtol=0, atol=0)
    report = load_checkpoint(TinyBackbone(), path, strict=False)
    assert report.missing_keys == ["stem.0.weight"]


def test_declared_ignored_keys(tmp_path):
    """A torchvision file's classifier and an official SAM file's box embeddings are not errors under strict."""
    state = dict(ResNet50().state_dict(), **{"fc.weight": torch.zeros(10, 2048), "fc.bias": torch.zeros(10)})
    torch.save(state, tmp_path / "r50.pth")
    report = create_model("resnet50", checkpoint=tmp_path / "r50.pth").checkpoint_report
    assert report.ignored_keys == ["fc.weight", "fc.bias"] and not report.unexpected_keys
    sam = create_model("sam_tiny")
    torch.save(dict(sam.state_dict(), **{"prompt_encoder.point_embeddings.3.weight": torch.zeros(1, 64)}), tmp_path / "sam.pth")
    assert create_model("sam_tiny", checkpoint=tmp_path / "sam.pth").checkpoint_report.ignored_keys == [
        "prompt_encoder.point_embeddings.3.weight"
    ]
    encoder = create_model("sam_tiny_encoder", checkpoint=tmp_path / "sam.pth", checkpoint_prefix="image_encoder.")
    torch.testing.assert_close(encoder.pos_embed, sam.image_encoder.pos_embed)


def test_bad_files_name_the_file_and_the_problem(tmp_path):
    good = tmp_path / "good.pth"
    torch.save(TinyBackbone().state_dict(), good)
    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    foreign = tmp_path / "foreign.pth"
    foreign.write_text("model weights: see README\n")
    not_a_state_dict = tmp_path / "list.pth"
    torch.save([1, 2, 3], not_a_state_dict)
    cases = {
        empty: "empty.pth: the file is empty",
        truncated: "truncated.pth.*truncated",
        foreign: "foreign.pth.*not a file written by torch.save",
        not_a_state_dict: "list.pth.*expected a non-empty state dict",
        tmp_path / "w.bin": "w.bin.*suffix",
    }
    (tmp_path / "w.bin").write_bytes(b"x")
    for path, message in cases.items():
        with pytest.raises(ValueError, match=message):
            create_model("tiny_backbone", checkpoint=path)
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        create_model("tiny_backbone", checkpoint=tmp_path / "missing.pth")
    prefixed = tmp_path / "prefixed.pth"
    torch.save({f"backbone.{k}": v for k, v in TinyBackbone().state_dict().items()}, prefixed)
    with pytest.raises(ValueError, match="try checkpoint_prefix='backbone.'"):
        create_model("tiny_backbone", checkpoint=prefixed)
    wide = tmp_path / "wide.pth"
    torch.save(TinyBackbone(widths=(16, 64, 128, 256)).state_dict(), wide)
    with pytest.raises(ValueError, match="(?s)wide.pth: shapes do not match.*stem.0.weight"):
        create_model("tiny_backbone", checkpoint=wide)


# --------------------------------------------------------------------------- packaging
def test_import_segblocks_models_is_light():
    code = (
        "import sys, segblocks.models as m; "
        "heavy = [k for k in sys.modules if k.startswith(('segblocks.models.sam', 'segblocks.models.hrsam', "
        "'segblocks.models.mask2former', 'segblocks.blocks', 'lightning', 'triton'))]; print(heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_torch_hub_entry_points(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hubconf = importlib.import_module("hubconf") if str(REPO) in sys.path else None
        if hubconf is None:
            sys.path.insert(0, str(REPO))
            try:
                hubconf = importlib.import_module("hubconf")
            finally:
                sys.path.remove(str(REPO))
        assert hubconf.dependencies == ["torch"] and all(callable(getattr(hubconf, n)) for n in EXPECTED)
        model = torch.hub.load(str(REPO), "sam_tiny", source="local")
        assert isinstance(model, SamModel)
        torch.save(model.state_dict(), tmp_path / "sam.pth")
        again = torch.hub.load(str(REPO), "sam_tiny", source="local", checkpoint=str(tmp_path / "sam.pth"))
    torch.testing.assert_close(again.mask_decoder.iou_token.weight, model.mask_decoder.iou_token.weight)
