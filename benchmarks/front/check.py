"""The front check of issue 33: is every YOLO operating point beaten by an hmpe point of the same precision that is
at least as fast and more accurate on both mAP50 and AP_small?"""

from __future__ import annotations

import math

PRECISIONS = ("fp32", "int8")


def _value(point: dict, key: str) -> float | None:
    """A metric as the check compares it: None where it is missing, NaN, or COCO's -1 (no ground truth in that
    size range), which no point can beat."""
    v = point.get(key)
    if v is None or not math.isfinite(float(v)) or float(v) < 0:
        return None
    return float(v)


def _summary(point: dict) -> dict:
    return {"model": point["model"], "imgsz": point["imgsz"], "precision": point["precision"],
            "runtime": point.get("runtime"), "ms": point["ms_median"], "mAP50": point.get("mAP50"),
            "AP_small": point.get("AP_small")}


def beats(hmpe: dict, yolo: dict) -> bool:
    """``hmpe`` is at least as fast (median ms) and has a higher mAP50 and a higher AP_small than ``yolo``."""
    keys = ("mAP50", "AP_small")
    if any(_value(p, k) is None for p in (hmpe, yolo) for k in keys):
        return False
    return hmpe["ms_median"] <= yolo["ms_median"] and all(_value(hmpe, k) > _value(yolo, k) for k in keys)


def _or_low(v: float | None) -> float:
    """A metric for ranking: a missing one below every real value."""
    return -1.0 if v is None else v


def _short(point: dict) -> str:
    return f"{point['model']} {point['imgsz']} px"


def why_unbeaten(yolo: dict, hmpe: list[dict]) -> str:
    """What keeps every hmpe point of ``hmpe`` (one precision) from beating ``yolo``: none is as fast, none as
    fast has a higher mAP50, or those that do have no higher AP_small; each with the nearest miss."""
    y_map, y_small = _value(yolo, "mAP50"), _value(yolo, "AP_small")
    if y_map is None or y_small is None:
        return "this point has no mAP50 or AP_small to beat"
    fast = [h for h in hmpe if h["ms_median"] <= yolo["ms_median"]]
    if not fast:
        first = min(hmpe, key=lambda h: h["ms_median"], default=None)
        return ("no hmpe point of this precision" if first is None else
                f"no hmpe point is as fast (fastest: {_short(first)}, {first['ms_median']:.1f} ms "
                f"> {yolo['ms_median']:.1f})")
    better = [h for h in fast if _or_low(_value(h, "mAP50")) > y_map]
    if not better:
        best = max(fast, key=lambda h: _or_low(_value(h, "mAP50")))
        return (f"no hmpe point as fast has a higher mAP50 (best: {_short(best)}, {best.get('mAP50') or 0:.3f} "
                f"<= {y_map:.3f})")
    best = max(better, key=lambda h: _or_low(_value(h, "AP_small")))
    return (f"{len(better)} hmpe point(s) as fast have a higher mAP50, none a higher AP_small (best: "
            f"{_short(best)}, {best.get('AP_small') or 0:.3f} <= {y_small:.3f})")


def front_check(points: list[dict]) -> dict:
    """For each precision, every YOLO point (``kind == "yolo"``) with the fastest hmpe point of that precision
    that beats it (:func:`beats`), or None and why not (:func:`why_unbeaten`), and how many hmpe points do:
    ``{"fp32": [{"yolo": {...}, "beaten_by": {...} | None, "n_beating": int, "why": str | None}, ...],
    "int8": [...], "all_beaten": {"fp32": bool | None, "int8": bool | None}}`` (None: no YOLO point of that
    precision to beat)."""
    out: dict = {}
    all_beaten: dict = {}
    for prec in PRECISIONS:
        same = [p for p in points if p["precision"] == prec]
        hmpe = sorted((p for p in same if p["kind"] == "hmpe"), key=lambda p: p["ms_median"])
        rows = []
        for y in sorted((p for p in same if p["kind"] == "yolo"), key=lambda p: (p["model"], p["imgsz"])):
            winners = [h for h in hmpe if beats(h, y)]
            rows.append({"yolo": _summary(y), "beaten_by": _summary(winners[0]) if winners else None,
                         "n_beating": len(winners), "why": None if winners else why_unbeaten(y, hmpe)})
        out[prec] = rows
        all_beaten[prec] = all(r["beaten_by"] is not None for r in rows) if rows else None
    out["all_beaten"] = all_beaten
    return out


def recheck_file(path) -> dict:
    """``python -m benchmarks.front --recheck FILE``: recompute the ``front_check`` of a result file from its points
    (nothing is timed or scored again), write the file back and print one line per YOLO point; returns the check."""
    import json
    from pathlib import Path

    path = Path(path)
    res = json.loads(path.read_text())
    res["front_check"] = front_check(res["points"])
    path.write_text(json.dumps(res, indent=1))
    for prec in PRECISIONS:
        for row in res["front_check"][prec]:
            y, beaten = row["yolo"], row["beaten_by"]
            print(f"{prec} {y['model']} {y['imgsz']} px: " + (f"beaten by {_short(beaten)}" if beaten else row["why"]))
    return res["front_check"]
