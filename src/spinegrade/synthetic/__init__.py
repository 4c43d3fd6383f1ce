"""synthetic: the RSNA-format phantom generator.

Only the synthesize stage, ``spinegrade synthesize``, tests, benchmarks and scripts import
it; the packages below ``spinegrade.cli`` never do (an import-linter contract).
"""

from spinegrade.synthetic.dataset import generate_dataset

__all__ = ["generate_dataset"]
