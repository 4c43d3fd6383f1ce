"""scoring: the official RSNA metric, classification metrics, solution rows, class prior
and submission rows, study-level bootstrap intervals and temperature scaling: pure
functions on tables and arrays, shared by training, inference and evaluation."""
