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


def front_check(points: list[dict]) -> dict:
    """For each precision, every YOLO point (``kind == "yolo"``) with the fastest hmpe point of that precision
    that beats it (:func:`beats`), or None, and how many hmpe points do: ``{"fp32": [{"yolo": {...},
    "beaten_by": {...} | None, "n_beating": int}, ...], "int8": [...], "all_beaten": {"fp32": bool | None,
    "int8": bool | None}}`` (None: no YOLO point of that precision to beat)."""
    out: dict = {}
    all_beaten: dict = {}
    for prec in PRECISIONS:
        same = [p for p in points if p["precision"] == prec]
        hmpe = sorted((p for p in same if p["kind"] == "hmpe"), key=lambda p: p["ms_median"])
        rows = []
        for y in sorted((p for p in same if p["kind"] == "yolo"), key=lambda p: (p["model"], p["imgsz"])):
            winners = [h for h in hmpe if beats(h, y)]
            rows.append({"yolo": _summary(y), "beaten_by": _summary(winners[0]) if winners else None,
                         "n_beating": len(winners)})
        out[prec] = rows
        all_beaten[prec] = all(r["beaten_by"] is not None for r in rows) if rows else None
    out["all_beaten"] = all_beaten
    return out
