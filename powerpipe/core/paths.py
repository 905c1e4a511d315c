"""Every path of the project, derived from one place (the repository root)."""

from __future__ import annotations

from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent.parent  # powerpipe/
PROJECT_ROOT = PACKAGE_DIR.parent
NOTEBOOKS_DIR = PROJECT_ROOT / "notebooks"
RUNNER_DIR = PROJECT_ROOT / "runner"
REPORT_TEMPLATES_DIR = PROJECT_ROOT / "report_templates"
DATA_DIR = PROJECT_ROOT / "data"
OUTPUTS_DIR = PROJECT_ROOT / "outputs"
DEFAULT_CONFIG = RUNNER_DIR / "pipeline.yaml"
SMOKE_CONFIG = RUNNER_DIR / "smoke.yaml"

# The processed dataset's usual name, in data/ (git-ignored).
PROCESSED_DATA_NAME = "germany.csv"
SYNTHETIC_DATA_NAME = "synthetic_germany.csv"
# The raw OPSD downloads (cache) and the processed file built from them (`--data opsd`).
RAW_DATA_DIR = DATA_DIR / "raw"
PROCESSED_DATA_DIR = DATA_DIR / "processed"

TRACKING_DB_NAME = "mlflow.db"
ARTIFACTS_DIR_NAME = "mlartifacts"


def tracking_db(outputs_dir: Path = OUTPUTS_DIR) -> Path:
    """The embedded SQLite tracking store that a run uses when no tracking URI is given."""
    return Path(outputs_dir).resolve() / TRACKING_DB_NAME


def default_tracking_uri(outputs_dir: Path = OUTPUTS_DIR) -> str:
    return f"sqlite:///{tracking_db(outputs_dir)}"


def artifact_root_for(tracking_uri: str) -> str | None:
    """Artifact folder beside a local SQLite store; None lets a tracking server decide."""
    prefix = "sqlite:///"
    if tracking_uri.startswith(prefix):
        db_path = Path(tracking_uri[len(prefix):])
        return (db_path.parent / ARTIFACTS_DIR_NAME).resolve().as_uri()
    return None
