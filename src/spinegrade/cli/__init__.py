"""cli: the `spinegrade` command (synthesize, score, predict)."""
