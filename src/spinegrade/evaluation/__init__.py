"""evaluation: scoring out-of-fold predictions, comparing backbones, localization error."""
