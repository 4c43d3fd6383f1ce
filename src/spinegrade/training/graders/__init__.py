"""Training the graders: one (condition group, backbone) on study-level folds."""
