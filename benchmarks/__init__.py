"""hrexp's benchmark suite (``make bench``): tables of ratios measured side by side, never timed tests."""
