"""training: the engine (the loop, data loading, augmentation, schedules, several GPUs) and
the two model families it trains, the graders and the localizers.

``graders/`` and ``localizers/`` both import ``engine/`` and never each other (an
import-linter contract), so a change to one family's code re-runs only its own training
stage.
"""
