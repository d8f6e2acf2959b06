"""rppnets: randomly permuted parameters, k-times wider layers without k-times the parameters.

    from rppnets import RPPLinear, HashedLinear, LowRankLinear, MLP
"""

# importing the package registers the rppnets:: torch ops, which compiled or exported programs may call
from rppnets.layers.hashed_linear import HashedLinear
from rppnets.layers.low_rank_linear import LowRankLinear
from rppnets.models import MLP
from rppnets.layers.rpp_linear import PERMUTATIONS, RPPLinear, index_storage

__all__ = ["MLP", "PERMUTATIONS", "HashedLinear", "LowRankLinear", "RPPLinear", "index_storage"]
