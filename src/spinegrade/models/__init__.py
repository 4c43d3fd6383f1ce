"""models: the backbone factory with FLOPs and parameters, the heatmap network, and what the
models read: crop tensors (inputs) and localizer samples (points)."""
