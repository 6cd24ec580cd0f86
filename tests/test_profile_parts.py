"""python -m benchmarks.profile_parts in smoke mode: every part of hmpe-n is timed, and the parts add up."""

from benchmarks import profile_parts as prof


def test_profile_parts_smoke(tmp_path):
    out = tmp_path / "p.md"
    per_part = prof.main(["--smoke", "--threads", "1", "--out", str(out)])
    for p in prof.PARTS:  # hmpe-n has every part: LSConv, heatmap path, MOHFE, HIDQ
        assert len(per_part[p]) == 2 and all(t > 0 for t in per_part[p]), p
    for r in range(2):  # exclusive parts never exceed the whole call
        assert sum(per_part[p][r] for p in prof.PARTS) <= per_part["total"][r] * 1.001
    text = out.read_text()
    assert "| lsconv |" in text and "| gradcam++ |" in text and "**total**" in text
