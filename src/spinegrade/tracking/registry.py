"""The chosen grader of each condition group in the MLflow Model Registry.

compare-backbones registers, per group, the model it ranked best (a backbone, or the
ensemble of all of them) as a new version of registered model ``{experiment}-{group}`` and
points the alias ``champion`` at it. A version is a directory: ``grader.json`` (group, model,
backbones) and, per backbone, its fold weights (``fold*.safetensors``) and ``metrics.json``
(the fold temperatures), logged as artifact ``grader`` of the comparison run it came from.
``spinegrade predict --registry`` loads ``models:/{experiment}-{group}@champion`` back; so
does any team member's machine pointed at the same tracking server.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

log = logging.getLogger(__name__)

ALIAS = "champion"
MANIFEST = "grader.json"
DESCRIPTION = (
    "The {group} grader compare-backbones ranked best (alias champion: the latest choice). "
    "Files: grader.json, and per backbone fold*.safetensors and metrics.json (temperatures). "
    "Load with `spinegrade predict --registry`."
)


def registered_name(experiment: str, group: str) -> str:
    return f"{experiment}-{group}"


def register_choice(
    experiment: str, run_id: str, group: str, model: str, backbone_dirs: dict[str, Path]
) -> str:
    """Log the chosen grader's files to run ``run_id``, register them, set the alias.

    Args:
        experiment: the pipeline's experiment name (the registered name derives from it).
        run_id: the comparison run of the chosen (group, model) row.
        group, model: the row (``model`` a backbone or ``ensemble``).
        backbone_dirs: backbone -> its training output directory (models/{group}/{backbone}).

    Returns:
        The new version's number.
    """
    client = MlflowClient()
    for backbone, directory in backbone_dirs.items():
        files = [
            *sorted(Path(directory).glob("fold*.safetensors")),
            Path(directory) / "metrics.json",
        ]
        for f in files:
            client.log_artifact(run_id, str(f), f"grader/{backbone}")
    manifest = {"group": group, "model": model, "backbones": list(backbone_dirs)}
    client.log_dict(run_id, manifest, f"grader/{MANIFEST}")
    name = registered_name(experiment, group)
    try:
        client.create_registered_model(name, description=DESCRIPTION.format(group=group))
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    # a plain directory, not an MLflow-format model: registered by its artifact URI (MLflow
    # 3's register_model wants a logged model behind a runs:/ URI)
    source = f"{client.get_run(run_id).info.artifact_uri}/grader"
    version = client.create_model_version(
        name, source, run_id=run_id, tags={"group": group, "model": model}
    ).version
    client.set_registered_model_alias(name, ALIAS, version)
    log.debug("registered %s version %s (%s) as @%s", name, version, model, ALIAS)
    return str(version)


def download_choice(experiment: str, group: str, dst: str | Path) -> tuple[dict, Path]:
    """(manifest, directory) of ``models:/{experiment}-{group}@champion``, downloaded to dst."""
    uri = f"models:/{registered_name(experiment, group)}@{ALIAS}"
    path = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(dst)))
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        raise FileNotFoundError(f"{uri}: no {MANIFEST} (not registered by compare-backbones)")
    return json.loads(manifest_path.read_text()), path
