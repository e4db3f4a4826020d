"""Cost models: kernel costs (``kernels``: roofline + calibrated efficiency) and collectives."""
