"""The universal-segmentation module: injected models, original-resolution scoring, the printed metrics."""
import functools
import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from segblocks.blocks.proscale import ProgressiveScaleEncoder
from segblocks.data.coco_panoptic import COCOPanopticDataset
from segblocks.data.collate import collate_panoptic
from segblocks.data.transforms import PanopticEvalTransform
from segblocks.lightning import UniversalSegmentation
from segblocks.models.backbones import TinyBackbone
from segblocks.models.mask2former import Mask2Former, MSDeformPixelDecoder, MultiScaleMaskedTransformerDecoder


def _tiny_model():
    enc = ProgressiveScaleEncoder(layers_per_stage=(1, 1, 1), d_model=32, n_heads=4, d_ffn=64)
    return Mask2Former(
        backbone=TinyBackbone(widths=(8, 16, 24, 32)),
        pixel_decoder=MSDeformPixelDecoder(in_channels=[8, 16, 24, 32], encoder=enc, pixel_embedding="lpe", conv_dim=32, mask_dim=32),
        transformer_decoder=MultiScaleMaskedTransformerDecoder(in_channels=32, hidden_dim=32, num_classes=3, num_queries=5, nheads=4, dim_feedforward=64, dec_layers=3, mask_dim=32),
    ).eval()


def test_postprocess_resizes_cropped_logits_to_the_original_size():
    model = _tiny_model()
    images = torch.rand(2, 3, 64, 96) * 255
    image_sizes = torch.tensor([[64, 90], [50, 96]])
    output_sizes = torch.tensor([[37, 52], [101, 190]])
    outputs = model(images)
    preds = model.postprocess(outputs, (64, 96), image_sizes, thing_classes=[0, 1], tasks=("semantic",), output_sizes=output_sizes)
    up = F.interpolate(outputs["pred_masks"], size=(64, 96), mode="bilinear", align_corners=False)
    for i, ((h, w), (oh, ow)) in enumerate(zip(image_sizes.tolist(), output_sizes.tolist())):
        assert preds[i]["semantic"].shape == (3, oh, ow)
        mask = F.interpolate(up[i:i + 1, :, :h, :w], size=(oh, ow), mode="bilinear", align_corners=False)[0]
        expected = torch.einsum("qc,qhw->chw", outputs["pred_logits"][i].softmax(-1)[:, :-1], mask.sigmoid())
        torch.testing.assert_close(preds[i]["semantic"], expected)


def test_eval_dataset_keeps_original_targets_for_scoring(shared_data):
    root = shared_data / "coco_panoptic_sample"
    ds = COCOPanopticDataset(
        image_dir=root / "input_images", panoptic_dir=root / "panoptic_examples",
        annotation_file=root / "panoptic_examples.json", categories_file=root / "panoptic_coco_categories.json",
        transform=PanopticEvalTransform(short_side=200, max_size=300), keep_original_targets=True,
    )
    batch = functools.partial(collate_panoptic, size_divisibility=32)([ds[0], ds[1]])
    for i, t in enumerate(batch["orig_targets"]):
        assert tuple(t["masks"].shape[-2:]) == tuple(batch["orig_sizes"][i].tolist())
        assert max(batch["image_sizes"][i].tolist()) <= 300 < max(batch["orig_sizes"][i].tolist())
        assert t["masks"].sum() > 0 and len(t["labels"]) >= len(batch["targets"][i]["labels"])
    no_orig = COCOPanopticDataset(
        image_dir=root / "input_images", panoptic_dir=root / "panoptic_examples",
        annotation_file=root / "panoptic_examples.json", categories_file=root / "panoptic_coco_categories.json",
    )
    assert "orig_targets" not in collate_panoptic([no_orig[0]])
    assert collate_panoptic([])["images"].shape[0] == 0  # an empty batch, not an error


def test_module_takes_a_built_model_a_registry_name_or_parts():
    model = _tiny_model()
    assert UniversalSegmentation(model=model, num_classes=3, thing_classes=[0]).model is model
    named = UniversalSegmentation(model="proscale_tiny", num_classes=4, thing_classes=[0, 1])
    assert named.model.num_classes == 4 and named.hparams.model == "proscale_tiny"
    parts = UniversalSegmentation(
        backbone="tiny_backbone", pixel_decoder=model.pixel_decoder.__class__(
            in_channels=[32, 64, 128, 256], encoder=ProgressiveScaleEncoder(layers_per_stage=(1, 1, 1), d_model=32, n_heads=4, d_ffn=64),
            conv_dim=32, mask_dim=32),
        num_classes=2, thing_classes=[0], num_queries=4, dec_layers=2, hidden_dim=32, nheads=4, dim_feedforward=32,
    )
    assert parts.model.num_classes == 2 and parts.model.transformer_decoder.query_feat.shape == (4, 32)
    with pytest.raises(ValueError, match="num_classes=5"):
        UniversalSegmentation(model=_tiny_model(), num_classes=5, thing_classes=[0])
    with pytest.raises(ValueError, match="not both"):
        UniversalSegmentation(model=model, backbone=TinyBackbone(), num_classes=3, thing_classes=[0])


class _FixedMetric(torch.nn.Module):
    def __init__(self, values):
        super().__init__()
        self.values = values

    def compute(self):
        return {k: torch.tensor(v) for k, v in self.values.items()}

    def reset(self):
        pass


def test_undefined_metrics_are_neither_logged_nor_printed(monkeypatch, capsys):
    module = UniversalSegmentation(model=_tiny_model(), num_classes=3, thing_classes=[0])
    logged = {}
    monkeypatch.setattr(module, "log_dict", lambda values, **kw: logged.update(values, **{"_sync": kw.get("sync_dist")}))
    module._trainer = SimpleNamespace(sanity_checking=False)
    monkeypatch.setattr(type(module), "global_step", property(lambda self: 7))
    metrics = torch.nn.ModuleDict({"instance": _FixedMetric({"AP": 12.5, "APs": 3.0, "APl": math.nan})})
    monkeypatch.setattr("segblocks.lightning.universal_module.rank_zero_info", print)
    module._log_metrics(metrics, "val")
    assert set(logged) == {"val/AP", "val/APs", "_sync"} and logged["_sync"] is True
    table = capsys.readouterr().out
    assert "APs" in table and "APl" not in table and "nan" not in table
