"""Evaluation protocol of the universal-segmentation module: original-resolution scoring."""
import functools

import pytest
import torch
import torch.nn.functional as F

from segblocks.blocks.proscale import ProgressiveScaleEncoder
from segblocks.data.coco_panoptic import COCOPanopticDataset
from segblocks.data.collate import collate_panoptic
from segblocks.data.transforms import PanopticEvalTransform
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
    with pytest.raises(ValueError, match="empty batch"):
        collate_panoptic([])
