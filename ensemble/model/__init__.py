"""The member model: the protocol every member type implements, the fused MLP, output heads, FLOPs."""
