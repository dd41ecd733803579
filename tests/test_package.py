"""Package-level guarantees: light import, catalog, namespaced kernels package, the wheel (recipes,
licence, honest dependencies) installed alone in a fresh virtual environment."""
import subprocess
import sys

import pytest

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


def _build_wheel(repo, out_dir):
    import pytest

    pytest.importorskip("build", reason="wheel building needs the dev extra")
    proc = subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--skip-dependency-check", "--outdir", str(out_dir), str(repo)],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    (wheel,) = out_dir.glob("segblocks-*.whl")
    return wheel


def test_wheel_ships_recipes_and_license(tmp_path):
    import zipfile
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    wheel = zipfile.ZipFile(_build_wheel(repo, tmp_path))
    names = set(wheel.namelist())
    for recipe in repo.glob("recipes/*.yaml"):
        assert f"segblocks/recipes/{recipe.name}" in names, f"{recipe.name} is missing from the wheel"
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names), sorted(n for n in names if "dist-info" in n)
    metadata = wheel.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    requires = [line for line in metadata.splitlines() if line.startswith("Requires-Dist:")]
    required = [r for r in requires if "extra ==" not in r]
    for optional in ("triton", "tensorboard", "matplotlib"):  # extras, not requirements
        assert not any(optional in r for r in required), required
        assert any(optional in r for r in requires), requires
    assert any("torch>=2.5" in r for r in required), required


@pytest.mark.slow
def test_wheel_in_fresh_venv_runs_the_readme_command_from_any_directory(tmp_path):
    """`pip install segblocks` (the built wheel, no repository around): the card's command works."""
    import os
    import sysconfig
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    wheel = _build_wheel(repo, tmp_path / "dist")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    vpy = venv / "bin" / "python"
    site = subprocess.run([str(vpy), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    # the dependencies come from this environment (nothing is downloaded); its .pth files (the
    # editable install of segblocks) are not processed, so `segblocks` is the wheel's copy
    Path(site, "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    proc = subprocess.run([str(vpy), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"PYTHONWARNINGS": "ignore"}

    def run(*args):
        proc = subprocess.run([str(venv / "bin" / args[0]), *args[1:]], cwd=work, env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        return proc.stdout

    installed = run("python", "-c", "import segblocks; print(segblocks.__file__)")
    assert installed.startswith(site), installed
    assert run("segblocks", "recipes", "--path").strip() == str(Path(site, "segblocks", "recipes"))
    assert "pro_scale" in run("segblocks", "recipes")
    out = run("lightning", "fit", "-c", "recipes/pro_scale.yaml", "--print_config")
    assert "default_root_dir: runs/pro_scale" in out and "monitor: val/PQ" in out
    run("lightning", "fit", "-c", "recipes/pro_scale.yaml", "--trainer.fast_dev_run=1", "--trainer.enable_progress_bar=false",
        f"--data.cache_dir={tmp_path / 'cache'}", "--data.synthetic_num_train=2", "--data.synthetic_num_val=2", "--data.batch_size=2")
    assert segblocks.__version__ in run("lightning", "--version")
