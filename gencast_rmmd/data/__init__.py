"""Data layer: store opening, schema checks, windows and batches, statistics, simulator."""
