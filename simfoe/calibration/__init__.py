"""Calibration: measurement set -> hardware profile (fit_profile), stored sets vs predictions
(regression), real MoE/FoE forward passes vs simulation (testbed), the calibration report (report).

See docs/calibration.md.
"""
