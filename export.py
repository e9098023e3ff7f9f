"""Export a trained network: `python export.py ckpt_path=<file.ckpt> [format=onnx] [decode=true] [batch=fixed]`.

Writes `model.onnx` (or `output=<file>`) and `export.json` into the run folder, after checking the file
with onnxruntime against PyTorch. See conf/export.yaml for the options.
"""

from pathlib import Path

from hrexp.cli import export

if __name__ == "__main__":
    export(Path(__file__).resolve().parent)
