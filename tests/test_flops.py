"""FLOP counting convention and the PRO-SCALE encoder reductions of paper Table 1."""
import pytest
import torch
from torch import nn

from segblocks.flops import count_gflops, proscale_flop_table


def test_fvcore_convention_on_known_ops():
    conv = nn.Conv2d(4, 8, 3, padding=1)
    x = torch.randn(1, 4, 10, 12)
    assert count_gflops(lambda: conv(x)) * 1e9 == pytest.approx(4 * 8 * 9 * 120)  # MACs
    lin = nn.Linear(16, 5)
    y = torch.randn(7, 16)
    assert count_gflops(lambda: lin(y)) * 1e9 == pytest.approx(7 * 16 * 5)
    ln = nn.LayerNorm(16)
    assert count_gflops(lambda: ln(y)) * 1e9 == pytest.approx(5 * 7 * 16)  # fvcore: 5 per element
    up = lambda: nn.functional.interpolate(x, size=(20, 24), mode="bilinear", align_corners=False)  # noqa: E731
    assert count_gflops(up) * 1e9 == pytest.approx(4 * 4 * 20 * 24)
    # the deformable sampling core (grid_sample) is excluded, as detectron2's fvcore count does
    grid = torch.rand(1, 5, 5, 2) * 2 - 1
    assert count_gflops(lambda: nn.functional.grid_sample(x, grid, align_corners=False)) == 0


@pytest.mark.parametrize("backbone", ["swin_tiny", "resnet50"])
def test_encoder_reductions_match_paper_table1(backbone):
    # Reductions are ratios of per-token costs, so a quarter-area input gives the same percentages
    # as 800x1333 (the benchmark script prints the full-size table).
    rows = proscale_flop_table(backbone, (400, 667))
    assert rows[0]["config"] == "M2F"
    for row in rows[1:]:
        assert abs(row["reduction"] - row["paper_reduction"]) < 3.0, row
