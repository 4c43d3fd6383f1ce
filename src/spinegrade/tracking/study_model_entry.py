"""The study grader's MLflow "model from code" entry: MLflow copies this file into the
logged model and runs it on load (no pickled object: ``tracking.study_model``)."""

import mlflow

from spinegrade.tracking.study_model import StudyModel

mlflow.models.set_model(StudyModel())
