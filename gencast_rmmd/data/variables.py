"""ERA5 / WeatherBench2 variable names, units and CF metadata.

One table in one place: loaders, the simulator, forecast writers and the
evaluation all take names, units and standard names from here.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class VariableInfo:
    """CF metadata of one WB2 variable."""

    units: str
    standard_name: str
    long_name: str


VARIABLES: dict[str, VariableInfo] = {
    # Surface, time-varying.
    "2m_temperature": VariableInfo("K", "air_temperature", "2 metre temperature"),
    "mean_sea_level_pressure": VariableInfo(
        "Pa", "air_pressure_at_mean_sea_level", "Mean sea level pressure"),
    "10m_u_component_of_wind": VariableInfo("m s-1", "eastward_wind", "10 metre U wind component"),
    "10m_v_component_of_wind": VariableInfo("m s-1", "northward_wind", "10 metre V wind component"),
    "total_precipitation_6hr": VariableInfo(
        "m", "lwe_thickness_of_precipitation_amount", "Total precipitation accumulated over 6 hours"),
    "total_precipitation_12hr": VariableInfo(
        "m", "lwe_thickness_of_precipitation_amount", "Total precipitation accumulated over 12 hours"),
    "sea_surface_temperature": VariableInfo("K", "sea_surface_temperature", "Sea surface temperature"),
    # Pressure levels.
    "temperature": VariableInfo("K", "air_temperature", "Temperature"),
    "geopotential": VariableInfo("m2 s-2", "geopotential", "Geopotential"),
    "u_component_of_wind": VariableInfo("m s-1", "eastward_wind", "U component of wind"),
    "v_component_of_wind": VariableInfo("m s-1", "northward_wind", "V component of wind"),
    "vertical_velocity": VariableInfo(
        "Pa s-1", "lagrangian_tendency_of_air_pressure", "Vertical velocity"),
    "specific_humidity": VariableInfo("kg kg-1", "specific_humidity", "Specific humidity"),
    # Static.
    "geopotential_at_surface": VariableInfo("m2 s-2", "surface_geopotential", "Geopotential at surface"),
    "land_sea_mask": VariableInfo("1", "land_area_fraction", "Land-sea mask"),
}

# Names some stores use for the same coordinate.
COORDINATE_ALIASES: dict[str, str] = {
    "lat": "latitude",
    "lon": "longitude",
    "pressure_level": "level",
    "plev": "level",
    "isobaricInhPa": "level",
    "valid_time": "time",
}

# Forcings derived from time and longitude (GenCast data_utils): not stored.
FORCING_NAMES: tuple[str, ...] = (
    "year_progress_sin", "year_progress_cos", "day_progress_sin", "day_progress_cos")


def cf_attributes(name: str) -> dict[str, str]:
    """CF attributes (units, standard_name, long_name) for a WB2 variable, or {} if unknown."""
    info = VARIABLES.get(name)
    if info is None:
        return {}
    return {"units": info.units, "standard_name": info.standard_name, "long_name": info.long_name}
