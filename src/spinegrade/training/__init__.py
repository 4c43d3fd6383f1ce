"""training: the engine (augmentation, schedules) and the two model families it trains.

``graders/`` and ``localizers/`` are separate packages so that DVC, which depends on whole
packages, retrains only the family whose code changed; both import ``engine/``.
"""
