"""Package-level guarantees: light import, catalog, namespaced kernels package."""
import subprocess
import sys

import segblocks


def test_import_segblocks_loads_no_optional_backend():
    code = (
        "import sys, segblocks, segblocks.ops, segblocks.blocks, segblocks.models.mask2former, segblocks.metrics, segblocks.data; "
        "bad = [m for m in ('triton', 'xformers', 'mamba_ssm', 'albumentations', 'lightning') if m in sys.modules]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_every_catalogued_block_is_importable_from_top_level():
    blocks = segblocks.list_blocks()
    assert len(blocks) >= 10
    for info in blocks:
        obj = getattr(segblocks, info.name)
        assert callable(obj), info
        assert info.paper in segblocks.PAPERS and info.summary
    assert [b.name for b in segblocks.list_blocks("proscale")] == ["ProgressiveScaleEncoder", "TokenRecalibration", "LightPixelEmbedding"]


def test_unknown_attribute_and_paper():
    import pytest

    with pytest.raises(AttributeError):
        segblocks.NoSuchBlock  # noqa: B018
    with pytest.raises(ValueError, match="unknown paper"):
        segblocks.list_blocks("nope")


def test_kernels_package_is_namespaced():
    import segblocks_kernels

    assert segblocks_kernels.__name__ == "segblocks_kernels"
