"""evaluation: scoring the out-of-fold predictions (evaluate), the comparison of models
(compare-backbones), predict's report on the held-out studies, and their figures."""
