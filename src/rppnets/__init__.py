"""rppnets: randomly permuted parameters, k-times wider layers without k-times the parameters."""

# importing the package registers the rppnets:: torch ops, which compiled or exported programs may call
from rppnets.rpp_linear import PERMUTATIONS, RPPLinear, index_storage

__all__ = ["PERMUTATIONS", "RPPLinear", "index_storage"]
