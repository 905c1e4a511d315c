"""Every move of a registry alias (``production``), kept in the MLflow store itself: its history and rollback.

A move is a promotion (the gate let a better model through), a forced promotion (``--force-promote``),
a refresh (the holder's configuration won again and was refit on newer data) or a rollback
(``powerpipe rollback``). Each is one tag on the registered model, written once and never changed
(append-only, no extra file, no size limit on the history): key ``powerpipe.alias_history.<alias>.<UTC
time>``, value the move as JSON: the version left and the version taken, when, by which pipeline run
(or rollback), the metric and the two values that decided it, the evaluated run and the run whose model
was registered, and the last hour the new model learnt. The report and the dashboard read it with
``history``.

``rollback`` moves the alias back (to the previous holder, or a version named) and records it; the
run-layer command (``powerpipe.run.rollback``) takes the outputs lock around it.
"""

from __future__ import annotations

import getpass
import json
import logging
import math
import secrets
import socket
from dataclasses import asdict, dataclass, fields
from datetime import datetime, timezone

from powerpipe.core import tags
from powerpipe.core.exceptions import RollbackError, StoreUnreachableError

log = logging.getLogger(__name__)

PROMOTION, FORCED_PROMOTION, REFRESH, ROLLBACK = "promotion", "forced promotion", "refresh", "rollback"
ACTIONS = (PROMOTION, FORCED_PROMOTION, REFRESH, ROLLBACK)


@dataclass(frozen=True)
class AliasMove:
    """One move of ``alias``: from ``from_version`` ("" when it held nothing) to ``to_version``."""

    alias: str
    action: str  # one of ACTIONS
    from_version: str
    to_version: str
    at: str  # ISO time, UTC
    pipeline_run_id: str = ""  # the pipeline run that moved it ("" for a rollback)
    by: str = ""  # who: "pipeline run <id>", or "rollback by <user>@<host>"
    metric: str = ""
    value: float | None = None  # the new holder's score (its evaluated run's, on that run's split)
    previous_value: float | None = None  # the old holder's on the same hours (None: not compared)
    compared: str = ""  # how the two values were obtained
    evaluated_run_id: str = ""  # the run whose holdout and backtest scores chose the new holder
    registered_run_id: str = ""  # the run whose model the new version is (the refit run, or the evaluated run)
    trained_until: str = ""  # last hour the new holder learnt (ISO), "" unknown
    reason: str = ""

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict) -> "AliasMove":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in raw.items() if k in known})


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _stamp(moment: datetime) -> str:
    """Sortable, unique enough to never collide with another move (two runners at the same microsecond)."""
    return f"{moment:%Y%m%dT%H%M%S.%f}Z-{secrets.token_hex(2)}"


def _finite(value) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def record(client, name: str, move: AliasMove, moment: datetime | None = None) -> AliasMove:
    """Append ``move`` to ``name``'s history (one new registered-model tag)."""
    moment = moment or _now()
    client.set_registered_model_tag(name, tags.alias_history_key(move.alias, _stamp(moment)),
                                    json.dumps(move.as_dict(), sort_keys=True))
    return move


def history(client, name: str, alias: str | None = None) -> list[AliasMove]:
    """The moves of ``alias`` (every alias if None) of the registered model ``name``, oldest first; [] for a
    model that does not exist. StoreUnreachableError when the store did not answer."""
    from mlflow.exceptions import MlflowException

    from powerpipe.tracking.promotion import NOT_FOUND_CODES

    try:
        model_tags = client.get_registered_model(name).tags or {}
    except MlflowException as exc:
        if exc.error_code in NOT_FOUND_CODES:
            return []
        raise StoreUnreachableError(f"the tracking store did not answer for registered model {name}: "
                                    f"{str(exc).strip().splitlines()[0] if str(exc).strip() else exc}") from None
    prefix = f"{tags.ALIAS_HISTORY}."
    moves = []
    for key in sorted(k for k in model_tags if k.startswith(prefix)):
        if alias is not None and not key.startswith(tags.alias_history_key(alias, "")):
            continue
        try:
            moves.append(AliasMove.from_dict(json.loads(model_tags[key])))
        except (ValueError, TypeError) as exc:
            log.warning("alias history entry %s of %s is unreadable (%s); left out", key, name, exc)
    return moves


def last_move(client, name: str, alias: str) -> str:
    """The key of the alias's latest move ("" for none): what a report showing the history depends on."""
    model_tags = client.get_registered_model(name).tags or {}
    keys = [k for k in model_tags if k.startswith(tags.alias_history_key(alias, ""))]
    return max(keys) if keys else ""


def history_rows(moves: list[AliasMove], newest_first: bool = True) -> list[dict[str, str]]:
    """The history as rows of text, for a table (the report's and the dashboard's)."""
    def number(value) -> str:
        return f"{value:.4g}" if isinstance(value, (int, float)) else "–"

    rows = []
    for move in (reversed(moves) if newest_first else moves):
        rows.append({
            "when (UTC)": move.at.replace("T", " ").replace("+00:00", "")[:16],
            "move": move.action,
            "version": f"{move.from_version or '–'} → {move.to_version}",
            "by": move.by or (f"pipeline run {move.pipeline_run_id}" if move.pipeline_run_id else "–"),
            "metric": move.metric or "–",
            "new": number(move.value),
            "old (same hours)": number(move.previous_value),
            "trained until": move.trained_until.replace("T", " ").replace("+00:00", "")[:16] or "–",
        })
    return rows


@dataclass(frozen=True)
class Lineage:
    """Where a registered version came from: the run that scored it and what its model learnt."""

    evaluated_run_id: str  # the run whose holdout and backtest scores chose it ("" unknown)
    registered_run_id: str  # the run whose model the version is
    trained_until: str  # ISO time of the last hour its model learnt ("" unknown)
    alias: str  # the alias it was promoted to ("" unknown)

    @property
    def refit(self) -> bool:
        """Its model is a refit of the evaluated run's configuration on every hour (it learnt the test hours too)."""
        return bool(self.evaluated_run_id) and self.evaluated_run_id != self.registered_run_id


def lineage(client, name: str, version: str) -> Lineage:
    """The lineage of ``name`` version ``version`` from its tags (a version from before refits: its own run)."""
    model_version = client.get_model_version(name, str(version))
    version_tags = model_version.tags or {}
    run_id = model_version.run_id or ""
    return Lineage(version_tags.get(tags.EVALUATED_RUN) or run_id, run_id, version_tags.get(tags.TRAINED_UNTIL, ""),
                   version_tags.get(tags.ALIAS, ""))


def previous_holder(client, name: str, alias: str, current_version: str) -> str | None:
    """The version that held ``alias`` before ``current_version`` took it: the latest move into it says
    which; else the version's own ``previous_version`` tag (a promotion from before the history); else None."""
    for move in reversed(history(client, name, alias)):
        if move.to_version == str(current_version):
            return move.from_version or None
    version_tags = client.get_model_version(name, str(current_version)).tags or {}
    return version_tags.get(tags.PREVIOUS_VERSION) or None


def rollback(client, name: str, alias: str, to_version: str | None = None, by: str | None = None) -> AliasMove | None:
    """Move ``alias`` back to ``to_version`` (default: the holder before the current one) and record it.

    None when that version already holds it. RollbackError for a version that does not exist, a model
    without the alias, or no earlier holder recorded. The run left is tagged ``gate_lost_to`` the version
    taken, so that its cached result is not promoted straight back by the next pipeline run.
    """
    from mlflow.exceptions import MlflowException

    from powerpipe.spec.config import PromoteSpec
    from powerpipe.tracking.promotion import NOT_FOUND_CODES, alias_holder

    current = alias_holder(client, PromoteSpec(model_name=name, alias=alias))
    if current is None:
        raise RollbackError(f"no model holds models:/{name}@{alias}: nothing to roll back")
    if to_version is None:
        to_version = previous_holder(client, name, alias, str(current.version))
        if to_version is None:
            raise RollbackError(f"no earlier holder of models:/{name}@{alias} is recorded (version {current.version} "
                                "was the first); name one with --to VERSION")
    to_version = str(to_version).strip()
    try:
        target = client.get_model_version(name, to_version)
    except MlflowException as exc:
        if exc.error_code not in NOT_FOUND_CODES:
            raise StoreUnreachableError(f"the tracking store did not answer for {name} version {to_version}: "
                                        f"{exc}") from None
        known = sorted((int(v.version) for v in client.search_model_versions(f"name = '{name}'")), reverse=True)
        raise RollbackError(f"{name} has no version {to_version!r}"
                            + (f"; its versions: {', '.join(map(str, known))}" if known else "")) from None
    if str(target.version) == str(current.version):
        log.info("%s version %s already holds @%s: nothing to roll back", name, current.version, alias)
        return None
    client.set_registered_model_alias(name, alias, str(target.version))
    left_tags, taken_tags = current.tags or {}, target.tags or {}
    left_run = left_tags.get(tags.EVALUATED_RUN) or current.run_id
    if left_run:
        try:  # the next pipeline run must not promote the same (cached) run straight back over it
            client.set_tag(left_run, tags.GATE_LOST_TO, f"{name}/{target.version}")
        except MlflowException as exc:
            log.warning("could not tag run %s as rolled back from (%s)", left_run, exc)
    move = AliasMove(
        alias=alias, action=ROLLBACK, from_version=str(current.version), to_version=str(target.version),
        at=_now().isoformat(timespec="seconds"), by=by or f"rollback by {_who()}",
        metric=taken_tags.get(tags.METRIC, ""), value=_finite(taken_tags.get(tags.METRIC_VALUE)),
        previous_value=_finite(left_tags.get(tags.METRIC_VALUE)),
        compared="each version's own evaluated score (not re-scored)",
        evaluated_run_id=taken_tags.get(tags.EVALUATED_RUN) or target.run_id or "",
        registered_run_id=target.run_id or "", trained_until=taken_tags.get(tags.TRAINED_UNTIL, ""),
        reason=f"rolled back from version {current.version}")
    record(client, name, move)
    log.info("rolled @%s of %s back from version %s to version %s", alias, name, current.version, target.version)
    return move


def _who() -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{socket.gethostname()}"
