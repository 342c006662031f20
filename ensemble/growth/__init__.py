"""Growth rounds: function-preserving unit splits (pure), the splitting index, the round controller."""
