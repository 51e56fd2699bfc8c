"""Electron optics, probes, scans, objects, propagation and the shared forward model."""
