"""Model-agnostic scoring of weather forecasts: metrics, regions, baselines and scorecards.

Reads any forecast in the WeatherBench2 forecast layout and any truth store the
data layer opens; never imports the model, diffusion, distillation or
training code (DESIGN §2). Formulas: DESIGN §6; files: DESIGN §7.
"""
