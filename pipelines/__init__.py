"""Scheduled pipelines: the product's commands as a resumable stage graph.

`gencast-rmmd pipeline run CONFIG` runs, in a work directory,

    1 data       open the store (or simulate the embedded dataset), record per-split fingerprints
    2 stats      normalisation statistics over the training split
    3 teacher    train the teacher
    4 distill.*  one student per distiller config
    5 forecast.* the inits, then teacher, students, perfect-model reference and baselines
    6 evaluate.* score every forecast against the truth
    7 speed, scorecard   step timings and the scorecards

Modules: `config` (the pipeline YAML schema and the per-stage configs it
resolves), `stages` (the graph), `runner` (skip / resume / lock / manifest
logic), `manifest`, `lock`, `digests` (content hashes), `tasks` (the few stage
steps that are not product commands), `report` (the landing page) and `cli`.
"""
