"""All of params.yaml as one model, for the command line, benchmarks and tests.

Stages load only the sections they read (:func:`spinegrade.core.config.base.load_sections`);
this module imports every section's schema, so no stage imports it.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from spinegrade.core.config.base import Section, read_params, validate
from spinegrade.core.config.convert_dicom import ConvertConfig
from spinegrade.core.config.crop_rois import CropConfig
from spinegrade.core.config.data import DataConfig
from spinegrade.core.config.engine import EngineConfig
from spinegrade.core.config.evaluate import EvaluateConfig
from spinegrade.core.config.ingest import IngestConfig
from spinegrade.core.config.mlflow import MlflowConfig
from spinegrade.core.config.predict import PredictConfig
from spinegrade.core.config.split_folds import FoldsConfig
from spinegrade.core.config.synthesize import SyntheticConfig
from spinegrade.core.config.train_localizer import LocalizerConfig
from spinegrade.core.config.train_per_condition import TrainPerConditionConfig


class Params(Section):
    """All of params.yaml (hyphenated section names are the attributes' aliases)."""

    data: DataConfig = Field(default_factory=DataConfig)
    synthesize: SyntheticConfig = Field(default_factory=SyntheticConfig)
    ingest: IngestConfig = Field(default_factory=IngestConfig)
    convert_dicom: ConvertConfig = Field(default_factory=ConvertConfig, alias="convert-dicom")
    crop_rois: CropConfig = Field(default_factory=CropConfig, alias="crop-rois")
    split_folds: FoldsConfig = Field(default_factory=FoldsConfig, alias="split-folds")
    train_per_condition: TrainPerConditionConfig = Field(
        default_factory=TrainPerConditionConfig, alias="train-per-condition"
    )
    train_localizer: LocalizerConfig = Field(
        default_factory=LocalizerConfig, alias="train-localizer"
    )
    engine: EngineConfig = Field(default_factory=EngineConfig)
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig)
    predict: PredictConfig = Field(default_factory=PredictConfig)
    mlflow: MlflowConfig = Field(default_factory=MlflowConfig)


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read and validate a whole params file.

    Raises:
        ConfigError: for any problem, in one line naming the file and the dotted key
            (``params.yaml: convert-dicom.workers: expected an integer, got 'two'``).
    """
    return validate(path, read_params(path), Params)
