"""config: params.yaml as typed, frozen models, one module per section.

``base`` holds what they share and :func:`~spinegrade.core.config.base.load_sections`,
which a stage calls with the sections it reads; ``params`` is the whole file
(:func:`~spinegrade.core.config.params.load_params`) for the command line and tests. This
file imports nothing: every module of the package is imported on its own, so a stage's
import closure (its DVC dependencies) holds only the sections it reads.
"""
