"""cli: the command-line tools for users outside the DVC pipeline.

The ``spinegrade`` command (``main``): ``synthesize`` a dataset, ``score`` predictions with
the official metric, ``predict`` unseen studies. Beside it, run as ``python -m``:
``spinegrade.cli.ui`` (``make ui``: the MLflow UI on the workspace's store),
``spinegrade.cli.server`` (``make mlflow-server``: a team tracking server),
``spinegrade.cli.retrain`` (``make retrain``: pull, ``dvc repro``, push, summary) and
``spinegrade.cli.preset`` (``make exp-gpu``: a DVC experiment with a named params preset).
``process_group`` runs a server in its own process group for ui and server.
"""
