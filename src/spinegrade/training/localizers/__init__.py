"""Training the heatmap localizers: one per series type."""
