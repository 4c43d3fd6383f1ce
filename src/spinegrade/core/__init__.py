"""core: the vocabulary, errors, typed config, atomic io, parallel map, runtime, and the
command-line plumbing (logging, stage parsers, error exit) every entry point shares.

Imports nothing else of spinegrade; everything else may import it.
"""
