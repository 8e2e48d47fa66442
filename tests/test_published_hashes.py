"""The guard of every hashing change: what each committed result records is what the code computes."""

from __future__ import annotations

from pathlib import Path

from harness.results import read_result

REPO = Path(__file__).resolve().parents[1]


def test_every_published_result_keeps_its_configuration_hash():
    """The guard of every hashing change: what each committed result records is what the code computes."""
    from harness.bench.config import CellSpec

    paths = [p for p in sorted(REPO.glob("results/*/cells/*.json")) if not p.name.endswith(".spec.json")]
    assert paths
    for path in paths:
        result = read_result(path)
        assert CellSpec.from_record(result.config).config_hash() == result.config_hash, path
