"""The pipeline file's ``monitor:`` block: when the production model's live error raises an alert.

```yaml
monitor:
  max_rmse_vs_holdout: 1.3   # live RMSE over the holdout RMSE the model was promoted with
  min_skill: 0.2             # 1 - RMSE / RMSE of the better baseline (persistence or climatology)
```

Every pipeline run scores the production model on the hours it never learnt (``powerpipe.tracking.
monitoring``), with or without this block; the block only says when that is an alert. Either key may be
left out (no such alert).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from powerpipe.core.exceptions import ConfigError

MONITOR_KEYS = ("max_rmse_vs_holdout", "min_skill")


@dataclass(frozen=True)
class MonitorSpec:
    max_rmse_vs_holdout: float | None = None  # alert when live RMSE / holdout RMSE is above this
    min_skill: float | None = None  # alert when the skill against the better baseline is below this

    def as_dict(self) -> dict[str, float]:
        return {key: getattr(self, key) for key in MONITOR_KEYS if getattr(self, key) is not None}


def parse_monitor(raw: Any, where: str) -> MonitorSpec | None:
    """The ``monitor:`` block checked; None when absent. ConfigError names ``where`` and the key at fault."""
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise ConfigError(f"{where} must be a mapping such as {{max_rmse_vs_holdout: 1.3, min_skill: 0.2}}")
    for key in raw:
        if key not in MONITOR_KEYS:
            import difflib

            hint = difflib.get_close_matches(str(key), MONITOR_KEYS, n=1)
            raise ConfigError(f"{where}: unknown key {key!r}" + (f" (did you mean {hint[0]!r}?)" if hint else "")
                              + f"; allowed: {', '.join(MONITOR_KEYS)}")
    values = {}
    for key in MONITOR_KEYS:
        value = raw.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ConfigError(f"{where}.{key} must be a number, got {value!r}")
        if key == "max_rmse_vs_holdout" and value <= 0:
            raise ConfigError(f"{where}.{key} must be above 0 (1.3: live RMSE at most 30 % above the holdout's), "
                              f"got {value!r}")
        if key == "min_skill" and value >= 1:
            raise ConfigError(f"{where}.{key} must be below 1 (skill 1 is a perfect forecast), got {value!r}")
        values[key] = float(value)
    return MonitorSpec(**values)
