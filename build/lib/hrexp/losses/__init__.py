"""Loss modules (weighted heatmap MSE, segmentation CE / OHEM / Dice)."""
