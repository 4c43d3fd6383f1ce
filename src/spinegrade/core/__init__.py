"""core: the vocabulary, errors, typed config, atomic io, parallel map and runtime.

Imports nothing else of spinegrade; everything else may import it.
"""
