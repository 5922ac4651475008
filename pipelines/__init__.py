"""Scheduled pipelines: the product's commands as a resumable stage graph.

`gencast-rmmd pipeline run CONFIG` runs, in a work directory,

    1 data       open the store (or simulate the embedded dataset), record per-split fingerprints
    2 stats      normalisation statistics over the training split
    3 teacher    train the teacher
    4 distill.*  one student per distiller config (every candidate of a grid, extra seeds), and with a
                 `validation:` section: validation.* forecasts and select.* (the choice of each grid row)
    5 forecast.* the test inits, then teacher, students, teacher sampler rows, reference and baselines
    6 evaluate.* score every test forecast against the truth
    7 speed, scorecard   step timings and the scorecards

Modules: `config` (the pipeline YAML schema and the per-stage configs it
resolves), `grid` (a row's candidates and seeds), `graph` (the stage data),
`stages` (the graph), `candidates` (group 4), `forecasts` (a split's inits and
forecasts), `selection` (the choice on validation), `runner` (skip / resume /
lock / manifest logic), `manifest`, `lock`, `digests` (content hashes), `tasks`
(the few stage steps that are not product commands), `report` (the landing
page) and `cli`.
"""
