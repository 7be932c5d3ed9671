"""Labeling data model (projects, items, batches, assignments, annotations)."""
