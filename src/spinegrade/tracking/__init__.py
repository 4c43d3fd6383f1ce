"""tracking: MLflow logging: the store, parent runs and provenance, the training runs (fold
hooks, the machine and system metrics), the comparison experiment, the Model Registry,
predict's run, and the figures they log.

Only stages and the command line import it; the library below never does. The UI launcher
and the team server that serve this store are in ``spinegrade.cli``.
"""
