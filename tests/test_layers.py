"""The layer rule of `gencast_rmmd/layers.py` holds for the whole source, and can fail.

The rule reads imports with `ast`, deferred ones (inside functions) included,
so a lazy import cannot smuggle a cycle past it.
"""

from __future__ import annotations

import ast

from gencast_rmmd import layers


def test_no_import_breaks_the_layer_rule_and_no_layer_cycle_exists():
    edges = layers.layer_edges()
    assert layers.violations(edges) == []
    assert layers.cycles(edges, include_deferred=True) == []
    # the reading sees the whole project: every layer the rule names appears in some edge
    seen = {layers.short(layer) for pair in edges for layer in pair}
    assert {"cli", "commands", "pipelines", "evaluation", "forecast", "distill", "teacher", "training",
            "models", "diffusion", "data", "config", "errors"} <= seen


def test_the_rule_refuses_upward_peer_and_evaluation_imports():
    assert layers.allowed("forecast", "distill") and layers.allowed("distill", "training")
    assert not layers.allowed("distill", "forecast")           # upward
    assert not layers.allowed("distill", "teacher") and not layers.allowed("teacher", "distill")   # peers
    assert not layers.allowed("config", "data")
    assert not layers.allowed("pipelines", "cli") and layers.allowed("pipelines", "commands")
    assert layers.allowed("evaluation", "data") and not layers.allowed("evaluation", "training")
    assert not layers.allowed("commands", "evaluation") and layers.allowed("cli", "evaluation")
    assert not layers.allowed("newlayer", "errors")            # unknown layers must be placed first


def test_violations_and_cycles_name_the_modules_behind_them():
    """A made-up graph: a deferred upward import is refused and closes a cycle."""
    edges = {("gencast_rmmd.forecast", "gencast_rmmd.distill"):
             {"module": {("gencast_rmmd.forecast.build", "gencast_rmmd.distill.sampler")}, "deferred": set()},
             ("gencast_rmmd.distill", "gencast_rmmd.forecast"):
             {"module": set(), "deferred": {("gencast_rmmd.distill.run", "gencast_rmmd.forecast.run")}}}
    assert layers.violations(edges) == ["gencast_rmmd.distill.run -> gencast_rmmd.forecast.run (distill -> forecast)"]
    assert layers.cycles(edges, include_deferred=True) == [["gencast_rmmd.distill", "gencast_rmmd.forecast"]]
    assert layers.cycles(edges, include_deferred=False) == []


def test_imports_are_read_as_written_relative_and_deferred():
    source = ("import gencast_rmmd.errors\n"
              "from . import grid\n"
              "from ..config import DataConfig\n"
              "def later():\n    from gencast_rmmd.forecast import run\n")
    found = layers.imported_modules(ast.parse(source), "gencast_rmmd.data.source", is_package=False)
    assert found == [("gencast_rmmd.errors", False), ("gencast_rmmd.data.grid", False),
                     ("gencast_rmmd.config", False), ("gencast_rmmd.forecast.run", True)]
