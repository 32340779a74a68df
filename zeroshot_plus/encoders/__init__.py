"""The frozen towers: model loading and fingerprint, the text tower, the image pipeline."""
