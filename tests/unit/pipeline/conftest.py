"""Fixtures shared by the pipeline tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from dbbackup.pipeline import compress


@pytest.fixture(params=["isal", "stdlib"])
def gzip_backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Run a gzip test once with ISA-L (when installed) and once with the stdlib zlib."""
    if request.param == "isal":
        if compress._isal_zlib is None:
            pytest.skip("isal is not installed")
    else:
        monkeypatch.setattr(compress, "_isal_zlib", None)
    yield request.param
