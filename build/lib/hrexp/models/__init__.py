"""Backbones (``forward(x) -> list[Tensor]``, highest resolution first, plus ``feature_info``:
scratch HRNet, U-Net, timm models) and the heads that read them."""
