"""scoring: the official RSNA metric, classification metrics, solution rows, class prior
and submission rows: pure functions on tables, shared by training, inference and evaluation."""
