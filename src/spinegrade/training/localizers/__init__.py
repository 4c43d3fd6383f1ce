"""Training the heatmap localisers: one per series type."""
