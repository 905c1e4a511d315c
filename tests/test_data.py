"""Loading and checking the processed data, the synthetic generator, and download on loopback."""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd
import pytest

from powerpipe.forecast import data
from powerpipe.core.exceptions import DataError


def write_csv(tmp_path, frame: pd.DataFrame, name="d.csv"):
    path = tmp_path / name
    frame.to_csv(path)
    return path


def test_load_round_trip(tmp_path, three_rows):
    path = data.write_processed(three_rows, tmp_path / "p.csv")
    loaded = data.load_processed(path)
    pd.testing.assert_frame_equal(loaded, three_rows, check_freq=False)
    assert list(loaded.columns) == data.COLUMNS
    assert str(loaded.index.tz) == "UTC"
    assert path.read_text().splitlines()[1].startswith("2016-06-01 10:00:00+00:00,")


@pytest.mark.parametrize(
    "mangle, message",
    [
        (lambda f: f.drop(columns="rad_diffuse"), "missing required column(s) rad_diffuse"),
        (lambda f: f.assign(windspeed=["3.1", "calm", "3.6"]), "column windspeed has non-numeric value 'calm'"),
        (lambda f: f.assign(wind_GW=[1.0, None, 2.0]), "column wind_GW has missing values"),
    ],
)
def test_bad_columns_are_named(tmp_path, three_rows, mangle, message):
    path = write_csv(tmp_path, mangle(three_rows))
    with pytest.raises(DataError) as error:
        data.load_processed(path)
    assert message in str(error.value)
    assert str(path) in str(error.value)


def test_unparseable_time(tmp_path, three_rows):
    frame = three_rows.reset_index()
    frame[data.TIME_COLUMN] = frame[data.TIME_COLUMN].astype(str)
    frame.loc[1, data.TIME_COLUMN] = "yesterday-ish"
    path = tmp_path / "t.csv"
    frame.to_csv(path, index=False)
    with pytest.raises(DataError, match="unparseable time 'yesterday-ish'"):
        data.load_processed(path)


def test_duplicated_time(tmp_path, three_rows):
    frame = three_rows.copy()
    frame.index = [frame.index[0], frame.index[0], frame.index[2]]
    frame.index.name = data.TIME_COLUMN
    with pytest.raises(DataError, match="duplicated times"):
        data.load_processed(write_csv(tmp_path, frame))


def test_missing_empty_and_not_csv(tmp_path):
    with pytest.raises(DataError, match="not found"):
        data.load_processed(tmp_path / "nope.csv")
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(DataError, match="empty"):
        data.load_processed(tmp_path / "empty.csv")
    (tmp_path / "binary.csv").write_bytes(bytes(range(256)) * 4)
    with pytest.raises(DataError, match="not"):
        data.load_processed(tmp_path / "binary.csv")


def test_synthetic_is_deterministic_and_plausible():
    first, second = data.synthetic_frame(), data.synthetic_frame()
    pd.testing.assert_frame_equal(first, second)
    assert list(first.columns) == data.COLUMNS
    assert first.index[0] == pd.Timestamp("2013-01-01", tz="UTC")
    assert first.index[-1] == pd.Timestamp("2016-12-31 23:00", tz="UTC")
    assert (first["solar_GW"] >= 0).all() and (first["wind_GW"] > 0).all()
    night = first["rad_horizontal"] + first["rad_diffuse"] == 0
    assert (first.loc[night, "solar_GW"] == 0).all()
    assert first["solar_GW"].corr(first["rad_horizontal"] + first["rad_diffuse"]) > 0.9
    # Wind rises steeply with windspeed: far more at 7 m/s than at 3.5 m/s.
    calm = first.loc[first["windspeed"].between(3.3, 3.7), "wind_GW"].mean()
    windy = first.loc[first["windspeed"].between(6.8, 7.2), "wind_GW"].mean()
    assert windy > 4 * calm
    assert data.validate_frame(first.reset_index(), "synthetic") is not None


@pytest.fixture
def processed_bytes(tmp_path, three_rows):
    return data.write_processed(three_rows, tmp_path / "source.csv").read_bytes()


GERMANY = "/germany.csv"


@pytest.fixture
def data_server(serve, processed_bytes):
    """The processed file at GERMANY on loopback (conftest's `serve`), always answered 200 with the whole
    file (Range ignored), without validators."""
    return serve({GERMANY: processed_bytes}, validators=False, ignore_range=True)


def test_download_verifies_hash(tmp_path, processed_bytes, data_server):
    good = hashlib.sha256(processed_bytes).hexdigest()
    path = data.download(data_server.url(GERMANY), tmp_path / "dl" / "germany.csv", sha256=good)
    assert path.read_bytes() == processed_bytes
    with pytest.raises(DataError, match="expected"):
        data.download(data_server.url(GERMANY), tmp_path / "bad" / "germany.csv", sha256="0" * 64)
    assert list((tmp_path / "bad").iterdir()) == []  # nothing kept, not even a partial file


def test_download_cut_short_leaves_nothing(tmp_path, data_server):
    data_server.cut_every_answer_after = 50
    with pytest.raises(DataError):
        data.download(data_server.url(GERMANY), tmp_path / "cut" / "germany.csv")
    assert list((tmp_path / "cut").iterdir()) == []


def test_resolve_auto_downloads_then_uses_local(tmp_path, processed_bytes, data_server, monkeypatch):
    monkeypatch.setenv(data.URL_ENV, data_server.url(GERMANY))
    monkeypatch.setenv(data.SHA256_ENV, hashlib.sha256(processed_bytes).hexdigest())
    first = data.resolve("auto", data_dir=tmp_path / "data")
    assert first.source == "downloaded" and first.path.read_bytes() == processed_bytes
    second = data.resolve("auto", data_dir=tmp_path / "data")
    assert second.source == "file" and len(data_server.requests) == 1


def test_resolve_auto_offline_falls_back_to_synthetic(tmp_path, monkeypatch):
    monkeypatch.setenv(data.URL_ENV, "http://127.0.0.1:9/germany.csv")  # discard port: refused
    source = data.resolve("auto", data_dir=tmp_path / "data")
    assert source.synthetic and source.path.name == "synthetic_germany.csv"
    assert not (tmp_path / "data" / "germany.csv").exists()
    assert len(data.load_processed(source.path)) == 35064


def test_resolve_explicit_path_is_validated(tmp_path):
    with pytest.raises(DataError, match="not found"):
        data.resolve(str(tmp_path / "missing.csv"))


def test_evaluate_on_three_rows(three_rows):
    from powerpipe.forecast import modeling

    truth = three_rows[data.TARGETS]
    perfect = modeling.evaluate(truth, truth.to_numpy())
    assert perfect["rmse"] == 0 and perfect["r2"] == 1 and perfect["solar_mae"] == 0
    off = modeling.evaluate(truth, truth.to_numpy() + np.array([1.0, 3.0]))
    assert off["solar_rmse"] == pytest.approx(1.0) and off["wind_rmse"] == pytest.approx(3.0)
    assert off["rmse"] == pytest.approx(np.sqrt((1 + 9) / 2))
    assert set(off) == {"rmse", "mae", "r2"} | {f"{t}_{m}" for t in ("solar", "wind") for m in ("rmse", "mae", "r2")}
    with pytest.raises(ValueError):
        modeling.evaluate(truth, np.zeros((2, 2)))


def test_duplicate_at_autumn_clock_change_is_kept(tmp_path, three_rows):
    # The published file repeats 01:00 UTC on the last Sunday of October; that alone is accepted.
    frame = three_rows.copy()
    frame.index = pd.DatetimeIndex(["2013-10-27 00:00", "2013-10-27 01:00", "2013-10-27 01:00"], tz="UTC",
                                   name=data.TIME_COLUMN)
    loaded = data.load_processed(write_csv(tmp_path, frame))
    assert len(loaded) == 3
    frame.index = pd.DatetimeIndex(["2013-10-20 00:00", "2013-10-20 01:00", "2013-10-20 01:00"], tz="UTC",
                                   name=data.TIME_COLUMN)
    with pytest.raises(DataError, match="duplicated times"):
        data.load_processed(write_csv(tmp_path, frame, "other.csv"))


# -- a full disk ----------------------------------------------------------------------------------------

def test_download_onto_a_full_disk_is_disk_full_not_offline(tmp_path, data_server, monkeypatch):
    """ENOSPC mid-download: DiskFullError (resolve must not fall back to synthetic data), nothing left."""
    import errno
    import os

    from powerpipe.core.exceptions import DiskFullError

    real_fdopen = os.fdopen

    class Full:
        def __init__(self, handle):
            self.handle = handle

        def write(self, block):
            raise OSError(errno.ENOSPC, "No space left on device")

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.handle.close()

    monkeypatch.setattr(os, "fdopen", lambda fd, *a, **k: Full(real_fdopen(fd, *a, **k)))
    monkeypatch.setenv(data.URL_ENV, data_server.url(GERMANY))
    with pytest.raises(DiskFullError, match=r"^no space left on /\S* \(.* MB free\)"):
        data.resolve("auto", data_dir=tmp_path / "data")
    assert list((tmp_path / "data").iterdir()) == []
