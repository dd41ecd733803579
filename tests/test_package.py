"""Package-level guarantees: light import, catalog, namespaced kernels package."""
import subprocess
import sys

import segblocks


def test_import_segblocks_loads_no_optional_backend():
    code = (
        "import sys, segblocks, segblocks.ops, segblocks.blocks, segblocks.models.mask2former, segblocks.models.sam, "
        "segblocks.metrics, segblocks.data, segblocks.data.interactive, segblocks.interactive, segblocks.losses; "
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


def test_wheel_contains_every_package_and_console_scripts(tmp_path):
    """`pip install segblocks` from a built wheel gets every subpackage, the kernels and the scripts."""
    import zipfile
    from pathlib import Path

    import pytest

    pytest.importorskip("build", reason="wheel building needs the dev extra")
    repo = Path(__file__).resolve().parents[1]
    proc = subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--skip-dependency-check", "--outdir", str(tmp_path), str(repo)],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    (wheel,) = tmp_path.glob("segblocks-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    source_packages = {
        str(p.parent.relative_to(repo)).replace("triton_kernels", "segblocks_kernels", 1)
        for p in list(repo.glob("segblocks/**/*.py")) + list(repo.glob("triton_kernels/**/*.py"))
    }
    for package in source_packages:
        assert f"{package}/__init__.py" in names, f"{package} is missing from the wheel (no __init__.py?)"
    entry_points = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert "lightning = segblocks.lightning.cli:lightning_main" in entry_points
    assert "segblocks = segblocks.lightning.cli:main" in entry_points
