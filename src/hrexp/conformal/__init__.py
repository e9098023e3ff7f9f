"""Calibrated landmark uncertainty: split-conformal prediction regions (regions.py)."""
