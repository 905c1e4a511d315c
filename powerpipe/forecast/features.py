"""Features a forecaster has at forecast time, computed from the raw schema only.

The raw schema is what a served model takes: ``utc_timestamp`` plus the four weather columns
(``windspeed, temperature, rad_horizontal, rad_diffuse``). Nothing here reads the generation
columns: ``build`` takes only those raw columns from its input (``tests/test_features.py`` proves that
changing the targets leaves every feature unchanged).

This is the pipeline's features stage. It runs inside each model rather than as a notebook of its own:
``FeatureBuilder`` is the first step of every scikit-learn model (``modeling.make_model``) and the
Keras wrapper applies it before the net (``serving.FeatureModel``), so training, the holdout, the
backtest, ``mlflow models serve``, the dashboard and the report compute the same features with the
same code from the same columns, and cannot skew.

Feature sets (the notebooks' ``feature_set`` parameter):

- ``tutorial``: the four weather columns, as the tutorial used them.
- ``weather_calendar``: those four, plus

  * calendar cycles: hour of day and day of year as sine/cosine pairs;
  * a time trend (years since 2013-01-01, a fixed origin): installed capacity grew every year
    (wind output per windspeed³ rose by three quarters from 2013 to 2016), and without it every model
    predicts the average fleet of its training years; with it, a tree model applies the latest
    fleet and a linear one extrapolates the growth;
  * the sun over Germany, from pvlib (``pvlib.solarposition.get_solarposition``): elevation and
    azimuth at the geographic centre (51.16 N, 10.45 E; NREL SPA), and the elevation at four points near
    the borders (54.5 N 9.5 E, 47.8 N 10.0 E, 51.5 N 6.5 E, 51.5 N 14.0 E; pvlib's ``ephemeris``
    method, within 0.01° of SPA for the geometric elevation and ten times faster) so that sunrise and
    sunset, which sweep across the country in about 40 minutes, are graded. Each hour's sun is taken at
    its middle (``utc_timestamp`` + 30 min): the data's time stamps start hourly intervals;
  * irradiance physics (pvlib): the extraterrestrial irradiance, the clear-sky global horizontal
    irradiance (Haurwitz), the clearness index (measured / clear-sky global), and the irradiance on a
    south-facing module tilted 35° (``pvlib.irradiance.get_total_irradiance``, isotropic sky, from
    the measured direct and diffuse horizontal radiation): what a typical German PV panel receives;
  * power-curve features of the wind: windspeed², windspeed³, windspeed³ capped at a rated speed,
    windspeed³ times air density (from temperature), and the windspeed extrapolated to hub height
    with a day/night shear exponent;
  * weather leads and lags: windspeed, global radiation and temperature 1, 2, 3 and 6 hours before and
    after, and centred means over 3, 7 and 25 hours (windspeed) and 3 hours (radiation).

Leads and lags are weather, never generation. A lead (the weather of the next hours) is legitimate
for a forecaster: it is part of the numerical weather forecast issued before the hour, as the hour's
own weather is. They are matched by time, not by row: the value at exactly ``t ± k`` hours in the same
input, so a gap in the data (the file has a few missing hours and days) never pairs hours that are
not k hours apart, and the repeated autumn clock-change hour (two readings of 01:00 UTC) is read as
the mean of its readings. Where the neighbour is absent (the edges of the input, gaps, a one-row
request to the served model) the current hour's value stands in, so a request of one hour still gets
an answer. Computed on the rows passed in, so training, test, backtest folds and serving each see
only their own input.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, TransformerMixin

from powerpipe.forecast.data import FEATURES, TIME_COLUMN

RAW_COLUMNS = [TIME_COLUMN, *FEATURES]
TUTORIAL = "tutorial"
WEATHER_CALENDAR = "weather_calendar"
FEATURE_SETS = (TUTORIAL, WEATHER_CALENDAR)
DEFAULT_FEATURE_SET = WEATHER_CALENDAR


@dataclass(frozen=True)
class Site:
    name: str
    latitude: float
    longitude: float


# Germany's geographic centre (near Niederdorla, Thuringia) and four points near its borders.
CENTRE = Site("centre", 51.16, 10.45)
BORDER_SITES = (
    Site("north", 54.5, 9.5),
    Site("south", 47.8, 10.0),
    Site("west", 51.5, 6.5),
    Site("east", 51.5, 14.0),
)
MODULE_TILT = 35.0  # degrees: a typical fixed, south-facing German rooftop or field module
MODULE_AZIMUTH = 180.0
TREND_EPOCH = pd.Timestamp("2013-01-01", tz="UTC")  # fixed, so a model sees the same trend value at serving
RATED_WINDSPEED = 9.0  # m/s at 10 m, national mean: above this, turbines run at rated power
HUB_HEIGHT_RATIO = 10.0  # 100 m hub / 10 m measurement
SHEAR_DAY, SHEAR_NIGHT = 0.14, 0.30  # Hellmann exponents: mixed daytime vs stable night-time air

LAGS = (1, 2, 3, 6)  # hours; each both before (lag) and after (lead)
LAGGED = ("windspeed", "ghi", "temperature")
WINDOWS = {"windspeed": (3, 7, 25), "ghi": (3,)}  # centred rolling means, hours


def raw_input(frame: pd.DataFrame) -> pd.DataFrame:
    """A served model's input from a processed frame: ``utc_timestamp`` and the four weather columns.

    Accepts a frame indexed by time (as ``data.load`` returns it) or one with a ``utc_timestamp``
    column. ``utc_timestamp`` comes out as naive UTC times (MLflow's ``datetime`` type has no time
    zone); the index is kept, unnamed, so the rows still line up with the frame's targets.
    """
    if TIME_COLUMN in frame.columns:
        out = frame[RAW_COLUMNS].copy()
    elif isinstance(frame.index, pd.DatetimeIndex):
        out = frame[FEATURES].copy()
        out.insert(0, TIME_COLUMN, frame.index)
    else:
        raise ValueError(f"need a {TIME_COLUMN} column or a time index")
    out[TIME_COLUMN] = timestamps(out).tz_localize(None)
    out.index = out.index.rename(None)
    return out


def timestamps(raw: pd.DataFrame) -> pd.DatetimeIndex:
    """``utc_timestamp`` as UTC times: strings, naive (read as UTC) or aware values."""
    values = raw[TIME_COLUMN]
    if isinstance(values.dtype, pd.DatetimeTZDtype):
        times = pd.DatetimeIndex(values).tz_convert("UTC")
    elif pd.api.types.is_datetime64_dtype(values.dtype):
        times = pd.DatetimeIndex(values).tz_localize("UTC")
    else:
        try:
            times = pd.DatetimeIndex(pd.to_datetime(values, utc=True, format="mixed"))
        except (ValueError, TypeError) as exc:
            raise ValueError(f"{TIME_COLUMN}: not a time: {exc}") from None
    if times.hasnans:
        raise ValueError(f"{TIME_COLUMN} has {int(times.isna().sum())} missing time(s)")
    return times.rename(None)


def feature_names(feature_set: str) -> list[str]:
    """The columns ``build`` returns for ``feature_set``, in order."""
    check_feature_set(feature_set)
    return list(build(_example_raw(), feature_set).columns)


def check_feature_set(feature_set: str) -> str:
    if feature_set not in FEATURE_SETS:
        raise ValueError(f"unknown feature set {feature_set!r}: expected one of {', '.join(FEATURE_SETS)}")
    return feature_set


def build(raw: pd.DataFrame, feature_set: str = DEFAULT_FEATURE_SET) -> pd.DataFrame:
    """The features of ``feature_set`` for each row of ``raw`` (same index, same order, float64).

    ``raw``: the four weather columns and, for ``weather_calendar``, ``utc_timestamp`` (a column, or
    else a time index). Any other column (the targets, say) is never read.
    """
    check_feature_set(feature_set)
    missing = [c for c in FEATURES if c not in raw.columns]
    if missing:
        raise ValueError(f"model input lacks column(s) {', '.join(missing)}: it takes {', '.join(RAW_COLUMNS)}")
    weather = raw[FEATURES].astype("float64")
    if feature_set == TUTORIAL:
        return weather.copy()
    if TIME_COLUMN in raw.columns:
        times = timestamps(raw)
    elif isinstance(raw.index, pd.DatetimeIndex):
        times = raw.index.tz_localize("UTC") if raw.index.tz is None else raw.index.tz_convert("UTC")
    else:
        raise ValueError(f"feature set {feature_set!r} needs the time: model input lacks column {TIME_COLUMN}")
    weather = weather.reset_index(drop=True)
    return pd.concat([weather, _calendar(times), _sun(times, weather), _wind(times, weather),
                      _neighbours(times, weather)], axis=1).set_axis(raw.index)


def _calendar(times: pd.DatetimeIndex) -> pd.DataFrame:
    hour = (times.hour + times.minute / 60.0).to_numpy()
    year_length = np.where(times.is_leap_year, 366.0, 365.0)
    day = (times.dayofyear.to_numpy() - 1 + hour / 24.0) / year_length
    return pd.DataFrame({
        "hour_sin": np.sin(2 * np.pi * hour / 24.0), "hour_cos": np.cos(2 * np.pi * hour / 24.0),
        "doy_sin": np.sin(2 * np.pi * day), "doy_cos": np.cos(2 * np.pi * day),
        "time_trend": np.asarray((times - TREND_EPOCH) / pd.Timedelta(days=365.25), dtype="float64"),
    })


def _solar_position(times: pd.DatetimeIndex, site: Site, method: str = "nrel_numpy") -> pd.DataFrame:
    import pvlib

    # Unique times only: a request may repeat an hour (the autumn clock change does).
    unique = times.unique()
    position = pvlib.solarposition.get_solarposition(unique + pd.Timedelta(minutes=30), site.latitude,
                                                     site.longitude, method=method)
    position.index = unique
    return position.reindex(times)


def _sun(times: pd.DatetimeIndex, weather: pd.DataFrame) -> pd.DataFrame:
    import pvlib

    centre = _solar_position(times, CENTRE)
    zenith = centre["zenith"].to_numpy()
    azimuth = centre["azimuth"].to_numpy()
    out = {
        "sun_elevation": centre["elevation"].to_numpy(),
        "sun_azimuth_sin": np.sin(np.radians(azimuth)),
        "sun_azimuth_cos": np.cos(np.radians(azimuth)),
    }
    for site in BORDER_SITES:
        out[f"sun_elevation_{site.name}"] = _solar_position(times, site, "ephemeris")["elevation"].to_numpy()
    extra = np.asarray(pvlib.irradiance.get_extra_radiation(times + pd.Timedelta(minutes=30)), dtype="float64")
    cos_zenith = np.cos(np.radians(zenith))
    clear = np.asarray(pvlib.clearsky.haurwitz(pd.Series(centre["apparent_zenith"].to_numpy()))["ghi"],
                       dtype="float64")
    direct = weather["rad_horizontal"].to_numpy()
    diffuse = weather["rad_diffuse"].to_numpy()
    ghi = direct + diffuse
    # Direct normal from direct horizontal; bounded near the horizon where cos(zenith) -> 0.
    dni = np.where(cos_zenith > 0.087, direct / np.maximum(cos_zenith, 0.087), 0.0)
    poa = pvlib.irradiance.get_total_irradiance(MODULE_TILT, MODULE_AZIMUTH, zenith, azimuth, dni, ghi, diffuse,
                                                dni_extra=extra, model="isotropic")
    out.update({
        "extraterrestrial_horizontal": extra * np.clip(cos_zenith, 0.0, None),
        "clearsky_ghi": clear,
        "ghi": ghi,
        "clearness": np.where(clear > 10.0, ghi / np.maximum(clear, 10.0), 0.0),
        "poa_global": np.nan_to_num(np.asarray(poa["poa_global"], dtype="float64"), nan=0.0),
    })
    return pd.DataFrame(out)


def _wind(times: pd.DatetimeIndex, weather: pd.DataFrame) -> pd.DataFrame:
    speed = weather["windspeed"].to_numpy()
    kelvin = weather["temperature"].to_numpy() + 273.15
    density = 101325.0 / (287.05 * kelvin)  # kg/m³ at sea-level pressure
    daytime = weather["rad_horizontal"].to_numpy() + weather["rad_diffuse"].to_numpy() > 0
    hub = speed * HUB_HEIGHT_RATIO ** np.where(daytime, SHEAR_DAY, SHEAR_NIGHT)
    return pd.DataFrame({
        "windspeed_2": speed**2,
        "windspeed_3": speed**3,
        "windspeed_3_rated": np.minimum(speed, RATED_WINDSPEED) ** 3,
        "wind_power_density": 0.5 * density * speed**3,
        "windspeed_hub": hub,
    })


def _neighbours(times: pd.DatetimeIndex, weather: pd.DataFrame) -> pd.DataFrame:
    """Weather at exactly t ± k hours (matched by time), and centred rolling means over a regular hourly grid."""
    current = pd.DataFrame({
        "windspeed": weather["windspeed"].to_numpy(),
        "ghi": (weather["rad_horizontal"] + weather["rad_diffuse"]).to_numpy(),
        "temperature": weather["temperature"].to_numpy(),
    }, index=times)
    # One value per hour (the repeated autumn hour: the mean of its readings), on a gap-free grid.
    hourly = current.groupby(level=0).mean()
    if len(hourly):
        grid = pd.date_range(hourly.index.min(), hourly.index.max(), freq="h")
        hourly = hourly.reindex(grid)
    out = {}
    for column in LAGGED:
        series = hourly[column]
        for k in LAGS:
            for name, shifted in ((f"{column}_lag{k}", series.shift(k)), (f"{column}_lead{k}", series.shift(-k))):
                out[name] = _fill(shifted.reindex(times).to_numpy(), current[column].to_numpy())
    for column, widths in WINDOWS.items():
        series = hourly[column]
        for width in widths:
            mean = series.rolling(width, center=True, min_periods=1).mean()
            out[f"{column}_mean{width}h"] = _fill(mean.reindex(times).to_numpy(), current[column].to_numpy())
    return pd.DataFrame(out)


def _fill(values: np.ndarray, fallback: np.ndarray) -> np.ndarray:
    return np.where(np.isnan(values), fallback, values)


def _example_raw() -> pd.DataFrame:
    return pd.DataFrame({TIME_COLUMN: pd.to_datetime(["2016-06-01 12:00"], utc=True), "windspeed": [3.0],
                         "temperature": [20.0], "rad_horizontal": [300.0], "rad_diffuse": [100.0]})


class FeatureBuilder(TransformerMixin, BaseEstimator):
    """scikit-learn transformer: the raw schema in (``utc_timestamp`` + four weather columns), features out.

    Stateless (nothing is learnt in ``fit``), so ``Pipeline([("features", FeatureBuilder(set)), ("model",
    regressor)])`` takes the raw schema at training, evaluation and serving alike, and clones cleanly
    for the backtest's refits.
    """

    def __init__(self, feature_set: str = DEFAULT_FEATURE_SET):
        self.feature_set = feature_set

    def fit(self, X, y=None):
        check_feature_set(self.feature_set)
        self.n_features_in_ = len(RAW_COLUMNS)
        self.feature_names_in_ = np.asarray(RAW_COLUMNS, dtype=object)
        return self

    def transform(self, X) -> pd.DataFrame:
        return build(pd.DataFrame(X), self.feature_set)

    def get_feature_names_out(self, input_features=None) -> np.ndarray:
        return np.asarray(feature_names(self.feature_set), dtype=object)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.requires_fit = False
        tags.input_tags.string = True  # utc_timestamp may come as text (a JSON request)
        return tags
