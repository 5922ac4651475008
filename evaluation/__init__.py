"""Model-agnostic scoring of weather forecasts: metrics, regions, baselines and scorecards.

Reads any forecast in the WeatherBench2 forecast layout and any truth store the
data layer opens; never imports the model, diffusion, distillation or
training code (docs/DESIGN.md §2). Formulas: docs/DESIGN.md §6; files: docs/DESIGN.md §7.
"""
