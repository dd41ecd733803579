"""The CLI's data subcommands: ``check-data`` and ``precompute-embeddings`` on a recipe's data."""
from __future__ import annotations

import shutil

import pytest
import torch

from segblocks.lightning import cli

SMALL_INTERACTIVE = ["--data.synthetic_num_train=4", "--data.synthetic_num_val=2"]


def test_check_data_passes_on_clean_data_and_names_a_corrupt_file(tmp_path, shared_data, capsys):
    root = tmp_path / "GrabCut"
    shutil.copytree(shared_data / "GrabCut", root)
    args = ["-c", "recipes/sam.yaml", f"--data.root={root}", f"--data.cache_dir={tmp_path / 'cache'}", *SMALL_INTERACTIVE]
    assert cli.SUBCOMMANDS["check-data"].run(args) == 0
    assert "0 problems" in capsys.readouterr().out
    victim = sorted((root / "data_GT").iterdir())[0]
    victim.write_bytes(b"not an image")
    assert cli.SUBCOMMANDS["check-data"].run(["--no-decode", *args]) == 0  # exists, not empty: the fast check passes
    assert cli.SUBCOMMANDS["check-data"].run(args) == 1
    assert victim.name in capsys.readouterr().out


def test_check_data_needs_a_recipe():
    with pytest.raises(SystemExit):
        cli.SUBCOMMANDS["check-data"].run([])


def test_precompute_embeddings_writes_one_file_per_image(tmp_path, capsys):
    out = tmp_path / "embeds"
    args = [
        "--teacher", "sam_tiny_encoder", "--out-dir", str(out), "--splits", "val", "--dtype", "float16",
        "-c", "recipes/hrsam_distill.yaml", f"--data.cache_dir={tmp_path / 'cache'}", "--data.image_size=64",
        *SMALL_INTERACTIVE, "--data.max_val_samples=2",
    ]
    assert cli.SUBCOMMANDS["precompute-embeddings"].run(args) == 0
    files = sorted((out / "val").iterdir())
    assert files and f"val: {len(files)} embedding file(s)" in capsys.readouterr().out
    emb = torch.load(files[0], weights_only=True)
    assert emb.dtype == torch.float16 and emb.shape[-2:] == (4, 4)  # 64 px at stride 16


@pytest.mark.parametrize(
    "content, message",
    [(b"", "empty"), (b"PK\x03\x04" + b"x" * 64, "truncated"), (b"hello world", "not a file written by torch.save")],
)
def test_bad_ckpt_path_names_the_file_and_the_problem(tmp_path, content, message):
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(content)
    with pytest.raises(SystemExit) as exc:
        cli.main(["validate", "-c", "recipes/pro_scale.yaml", f"--ckpt_path={bad}", f"--trainer.default_root_dir={tmp_path}"])
    assert str(bad) in str(exc.value.code) and message in str(exc.value.code)


def test_truncated_real_checkpoint_is_named(tmp_path):
    good = tmp_path / "good.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(1000)}}, good)
    cut = tmp_path / "cut.ckpt"
    cut.write_bytes(good.read_bytes()[:-300])
    from segblocks.models.checkpoint import check_checkpoint_file

    assert check_checkpoint_file(good) == good
    with pytest.raises(ValueError, match="cut.ckpt.*(truncated|damaged)"):
        check_checkpoint_file(cut)
