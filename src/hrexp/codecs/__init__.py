"""Target encodings of the keypoint tasks, each a :class:`~hrexp.codecs.base.KeypointCodec`: ``encode(keypoints) ->
targets`` and ``decode(outputs) -> keypoints`` mirror each other; the contract says the rest (head, loss, flip test,
confidences, export)."""
