"""The model: tracing to a graph of cuts, the zoo, loading a user's model safely, saved splits, data and training."""
