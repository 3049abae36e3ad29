"""Inference: load scans (NIfTI or DICOM), predict on the working grid, map back exactly.

``predictor.Predictor`` is the per-volume core other stages reuse; ``volseg.stages.predict``
runs it over files and writes masks, quantification and summaries.
"""
