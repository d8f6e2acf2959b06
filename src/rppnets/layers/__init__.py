"""The layers: RPPLinear (its P, registered ops, backends and kernels) and its peers HashedLinear and LowRankLinear."""
