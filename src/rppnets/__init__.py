"""rppnets: randomly permuted parameters, k-times wider layers without k-times the parameters."""
