"""The callbacks' own measurements: peak memory per run."""

import sys

import pytest
import torch

from rppnets.callbacks import peak_rss_bytes, reset_peak_rss


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the peak resident set is reset through /proc")
def test_peak_rss_restarts_from_the_current_resident_set():
    big = torch.ones(50_000_000)  # 200 MB, touched
    del big
    before = peak_rss_bytes()
    reset_peak_rss()
    after = peak_rss_bytes()
    assert after < before - 150_000_000  # a later job of the same process does not inherit this peak
