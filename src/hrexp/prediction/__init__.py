"""``predict.py`` / ``hrexp-predict``: a trained checkpoint run on new images, predictions written in original pixels.

- :mod:`~hrexp.prediction.image_source`: the ``input`` option expanded to files, each image read and
  checked in the loader's workers (unreadable ones named and skipped), batches of images;
- :mod:`~hrexp.prediction.preprocess`: each data family's evaluation-time preprocessing, rebuilt
  from the checkpoint's config (the same transforms the datamodules use for val/test);
- :mod:`~hrexp.prediction.boxes`: person boxes for top-down pose (``boxes=<COCO JSON>``);
- :mod:`~hrexp.prediction.writers`: CSV / COCO JSON / mask PNGs / overlays / skipped list;
- :mod:`~hrexp.jobs.predict_run`: the command's body, ``predict(cfg)``.
"""
