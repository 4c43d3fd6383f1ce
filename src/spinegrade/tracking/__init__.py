"""tracking: the MLflow store and provenance, fold hooks, figures, and the UI launcher.

Only stages, the hooks and the command line import it; the library below never does.
"""
