"""tests/samples is a copy of shared/samples: fail when they drift apart."""
import pytest

from helpers import ROOT, SHARED_SAMPLES


@pytest.mark.skipif(not SHARED_SAMPLES.is_dir(), reason="shared/samples is not beside the checkout")
def test_copy_matches_shared_samples():
    copy = ROOT / "tests" / "samples"
    shared = {p.name: p.read_bytes() for p in SHARED_SAMPLES.glob("*.json")}
    mine = {p.name: p.read_bytes() for p in copy.glob("*.json")}
    assert shared == mine, "tests/samples differs from shared/samples: copy shared/samples/*.json again"
