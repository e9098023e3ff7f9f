"""Target encodings: each codec's ``encode(keypoints) -> targets`` and ``decode(outputs) -> keypoints`` mirror each other."""
