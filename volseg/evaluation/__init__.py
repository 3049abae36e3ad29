"""Segmentation evaluation: whole-volume and per-lesion metrics, summary statistics, report.

Modules: :mod:`~volseg.evaluation.metrics` (per-case metrics, ``case_metrics``),
:mod:`~volseg.evaluation.lesions` (connected-component detection),
:mod:`~volseg.evaluation.stats` (means, bootstrap CIs, strata, grade confusion),
:mod:`~volseg.evaluation.plots` and :mod:`~volseg.evaluation.report` (files for people).
The stage that reads folders and writes the outputs is :func:`volseg.stages.evaluate.run_evaluate`.
"""
