"""Order-preserving parallel map with a progress bar."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

from tqdm import tqdm
from tqdm.contrib.concurrent import process_map


def parallel_map(
    fn: Callable[[Any], Any], jobs: Sequence, workers: int, desc: str, unit: str
) -> list:
    """``[fn(j) for j in jobs]`` over ``workers`` processes (inline when 1), with a tqdm bar.

    Results come back in job order, so outputs do not depend on scheduling.
    """
    if workers <= 1 or len(jobs) <= 1:
        return [fn(j) for j in tqdm(jobs, total=len(jobs), desc=desc, unit=unit)]
    return process_map(
        fn,
        jobs,
        max_workers=min(workers, os.cpu_count() or 1),
        chunksize=2,
        desc=desc,
        unit=unit,
        tqdm_class=tqdm,
    )
