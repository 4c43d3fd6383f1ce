"""evaluation: scoring out-of-fold predictions, comparing backbones, localisation error."""
