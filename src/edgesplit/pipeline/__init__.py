"""`edgesplit run` and `edgesplit demo`: every stage in order from one config, each stage's file in one folder."""
