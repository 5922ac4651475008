"""Run the two CF checkers on files the project wrote: IOOS `compliance-checker --test=cf:1.8` and `cfchecks`.

Both come with the dev extras (pyproject.toml). What they need beyond pip:

- UDUNITS-2. compliance-checker uses `cf-units`, whose wheel bundles the
  library and its XML database. cfchecker's `cfunits` loads `libudunits2`
  with ctypes (`ctypes.util.find_library("udunits2")`); on a machine without
  the system package we point it at the copy inside `cf-units` (and at its
  XML database through `UDUNITS2_XML_PATH`), so a plain `pip install -e
  ".[dev]"` suffices.
- The CF tables. cfchecks downloads them from cfconventions.org unless given
  files; CI has no such access. The standard-name table is the one
  compliance-checker ships. The area-type and standardized-region tables are
  given empty: our files use neither `area_type` nor the `region` standard
  name, and any use of them would then be reported as an error, not passed.

A zarr store is checked through a NetCDF copy of what it stores (values and
attributes undecoded, `xr.open_zarr(decode_cf=False)`): netCDF-C's NCZarr
reader, through which both checkers could open a store, drops 0-d arrays
(the scalar `height_2m` / `height_10m` coordinates) and would report their
references as dangling.
"""

from __future__ import annotations

import ctypes.util
import json
import os
from pathlib import Path

import pytest
import xarray as xr

# IOOS compliance-checker's §5.1 check wants a coordinate variable *named* `time` to have standard_name
# `time`. CF-1.8 ties no meaning to the name; our `time` dim is WeatherBench2's initialisation time, whose CF
# standard name is `forecast_reference_time` (the valid time is the `valid_time` coordinate, standard_name
# `time`). The checker's name heuristic is wrong for this construct: that one message is set aside, cfchecks
# (which reads the standard names) checks the construct, and every other error counts.
IOOS_NAME_HEURISTIC = "Coordinate variable 'time' should have standard_name='time', found: 'forecast_reference_time'"


def _use_bundled_udunits() -> None:
    """Let cfchecker's `cfunits` find UDUNITS-2 inside `cf-units` when the system has none."""
    if ctypes.util.find_library("udunits2") is not None:
        return
    cf_units = pytest.importorskip("cf_units")
    root = Path(cf_units.__file__).parent
    libraries = sorted((root.parent / "cf_units.libs").glob("libudunits2*"))
    if not libraries:
        pytest.fail("cf-units carries no libudunits2 and the system has none: install libudunits2-0")
    bundled = str(libraries[0])
    find_library = ctypes.util.find_library
    ctypes.util.find_library = lambda name: bundled if name == "udunits2" else find_library(name)
    os.environ.setdefault("UDUNITS2_XML_PATH", str(root / "etc" / "share" / "udunits2.xml"))


def checkable(path: Path, scratch: Path) -> Path:
    """`path` if NetCDF; for a zarr store, a NetCDF copy of its raw values and attributes in `scratch`."""
    if not Path(path).is_dir():
        return Path(path)
    copy = scratch / f"{Path(path).stem}.zarr-as-stored.nc"
    with xr.open_zarr(path, decode_cf=False) as stored:
        # What the store holds, no more: xarray would add a default fill value to unfilled float variables.
        stored.to_netcdf(copy, encoding={name: {"_FillValue": None} for name, variable in stored.variables.items()
                                         if "_FillValue" not in variable.attrs})
    return copy


def compliance_checker_report(path: Path, scratch: Path) -> tuple[list[str], list[str]]:
    """(errors, warnings) of IOOS `compliance-checker --test=cf:1.8`: the messages of failed high / medium checks."""
    runner = pytest.importorskip("compliance_checker.runner")
    runner.CheckSuite().load_all_available_checkers()     # registers cf:1.8 (what the command line does first)
    report = scratch / f"{Path(path).name}.compliance.json"
    runner.ComplianceChecker.run_checker(str(checkable(path, scratch)), ["cf:1.8"], verbose=0, criteria="normal",
                                         output_filename=str(report), output_format="json_new")
    results = next(iter(json.loads(report.read_text()).values()))["cf:1.8"]

    def failed(priority: str) -> list[str]:
        return [message for result in results[priority] if result["value"][0] < result["value"][1]
                for message in result["msgs"]]

    return failed("high_priorities"), failed("medium_priorities")


def cfchecks_report(path: Path, scratch: Path) -> tuple[list[str], list[str]]:
    """(errors, warnings) of `cfchecks` (CF-1.8): FATAL and ERROR messages, then WARN, each with its variable."""
    _use_bundled_udunits()
    cfchecks = pytest.importorskip("cfchecker.cfchecks")
    compliance_checker = pytest.importorskip("compliance_checker")
    standard_names = Path(compliance_checker.__file__).parent / "data" / "cf-standard-name-table.xml"
    area_types, regions = scratch / "area-type-table.xml", scratch / "standardized-region-list.xml"
    empty = "<{0}><version_number>none</version_number><date>none</date></{0}>"
    area_types.write_text(empty.format("area_type_table"))
    regions.write_text(empty.format("standardized_region_list"))
    checker = cfchecks.CFChecker(version="1.8", silent=True, cfStandardNamesXML=str(standard_names),
                                 cfAreaTypesXML=str(area_types), cfRegionNamesXML=str(regions))
    results = checker.checker(str(checkable(path, scratch)))
    scopes = {"global": results["global"], **results["variables"]}
    errors = [f"{scope}: {message}" for scope, found in scopes.items()
              for message in (*found["FATAL"], *found["ERROR"])]
    warnings = [f"{scope}: {message}" for scope, found in scopes.items() for message in found["WARN"]]
    return errors, warnings


def assert_cf_clean(path: Path, scratch: Path) -> dict[str, list[str]]:
    """Both checkers report 0 errors on `path` (see `IOOS_NAME_HEURISTIC`); returns the warnings left."""
    ioos_errors, ioos_warnings = compliance_checker_report(path, scratch)
    cf_errors, cf_warnings = cfchecks_report(path, scratch)
    assert [error for error in ioos_errors if error != IOOS_NAME_HEURISTIC] == [], f"compliance-checker on {path}"
    assert cf_errors == [], f"cfchecks on {path}"
    return {"compliance-checker": ioos_warnings, "cfchecks": cf_warnings}
