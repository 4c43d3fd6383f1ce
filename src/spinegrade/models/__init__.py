"""models: the backbone factory with FLOPs and parameters, and the heatmap network."""
