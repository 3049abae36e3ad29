"""Orchestration: plan, manifests, the resumable run of every stage, the study."""
