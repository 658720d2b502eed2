"""The verdict of a benchmark run: at each grid point, which backend was fastest and how fastformer's
time compares with it (and with the fastest full-precision backend when the fastest is quantized),
said plainly when fastformer loses; where fastformer's own quantized rows ran (fastformer-int8 / -bf16)
beside a quantized peer, the fastest of them against that peer too; and the run's summary over its
points. Ratios are fastformer's median divided by the other's: above 1, fastformer is slower."""

HEADLINE = "fastformer"  # the row the verdict speaks for; else the fastest full-precision row with ours=True


def _ms(row: dict) -> str:
    return f"{row['median_ms']:.2f} ms"


def _ours(ok: list[dict]) -> dict | None:
    named = [r for r in ok if r["backend"] == HEADLINE]
    return named[0] if named else next((r for r in ok if r.get("ours") and not r.get("quantized")), None)


def _versus(ours: dict, other: dict | None, among: str, name: str = "fastformer") -> str:
    """fastformer (or its row `name`) against the fastest of a set of other rows (sorted fastest first)."""
    if other is None:
        return f"{name} is the only {among}backend that ran"
    ratio = ours["median_ms"] / other["median_ms"]
    if ratio <= 1:
        return f"{name} is fastest{' among ' + among.strip() + ' backends' if among else ''} ({_ms(ours)}), " \
               f"{1 / ratio:.2f}x ahead of {other['backend']} ({_ms(other)})"
    among = f"among {among.strip()} backends, " if among else ""
    return f"{among}{other['backend']} is faster ({_ms(other)}): {name} ({_ms(ours)}) takes {ratio:.2f}x its time"


def point_verdict(rows: list[dict], busy_load: float | None = None, threads: int | None = None) -> dict:
    """The verdict of one grid point's rows (one per backend). busy_load: the load average when it was
    above the `threads` in use (the verdict then says the point is not to be trusted)."""
    first = rows[0]
    verdict = {k: first.get(k) for k in ("device", "dtype", "batch", "seq", "padded_seq")}
    verdict["machine_busy"] = busy_load is not None
    ok = sorted((r for r in rows if r["status"] == "ok"), key=lambda r: r["median_ms"])
    ours = _ours(ok)
    fastest = ok[0] if ok else None
    others = [r for r in ok if not r.get("ours")]  # fastformer's own variants (hf+optimize) are not rivals
    full_precision = [r for r in others if not r.get("quantized")]
    ours_quantized = next((r for r in ok if r.get("ours") and r.get("quantized")), None)
    others_quantized = [r for r in others if r.get("quantized")]
    verdict.update(
        fastest=fastest and fastest["backend"], fastest_ms=fastest and fastest["median_ms"],
        fastest_quantized=bool(fastest and fastest.get("quantized")),
        fastformer=ours and ours["backend"], fastformer_ms=ours and ours["median_ms"],
        fastest_other=others[0]["backend"] if others else None,
        fastformer_vs_fastest_other=ours["median_ms"] / others[0]["median_ms"] if ours and others else None,
        fastest_full_precision_other=full_precision[0]["backend"] if full_precision else None,
        fastformer_vs_fastest_full_precision_other=(ours["median_ms"] / full_precision[0]["median_ms"]
                                                    if ours and full_precision else None),
        fastformer_quantized=ours_quantized and ours_quantized["backend"],
        fastest_quantized_other=others_quantized[0]["backend"] if others_quantized else None,
        fastformer_quantized_vs_fastest_quantized_other=(ours_quantized["median_ms"] / others_quantized[0]["median_ms"]
                                                         if ours_quantized and others_quantized else None))
    if fastest is None:
        text = "nothing ran"
    elif ours is None:
        text = f"fastest: {fastest['backend']} ({_ms(fastest)}); no fastformer row ran"
    elif others and others[0].get("quantized") and others[0]["median_ms"] < ours["median_ms"]:
        # A quantized backend trades accuracy for speed: say so, and rank the full-precision ones apart.
        text = (f"{others[0]['backend']} (quantized) is faster ({_ms(others[0])}): fastformer takes "
                f"{ours['median_ms'] / others[0]['median_ms']:.2f}x its time; "
                + _versus(ours, full_precision[0] if full_precision else None, "full-precision "))
    else:
        text = _versus(ours, others[0] if others else None, "")
    if ours_quantized is not None and others_quantized:
        text += "; quantized: " + _versus(ours_quantized, others_quantized[0], "", name=ours_quantized["backend"])
    if busy_load is not None:
        text += f" (machine busy: load average {busy_load:.1f} above the {threads} threads in use)"
    verdict["text"] = text
    return verdict


def summarize(verdicts: list[dict]) -> dict:
    """The run's summary: every point's verdict and how many points fastformer won."""
    compared = [v for v in verdicts if v["fastformer"] is not None]
    won = [v for v in compared if v["fastformer_vs_fastest_other"] is None or v["fastformer_vs_fastest_other"] <= 1]
    won_full_precision = [v for v in compared if v["fastformer_vs_fastest_full_precision_other"] is None
                          or v["fastformer_vs_fastest_full_precision_other"] <= 1]
    quantized = [v for v in verdicts if v["fastformer_quantized_vs_fastest_quantized_other"] is not None]
    won_quantized = [v for v in quantized if v["fastformer_quantized_vs_fastest_quantized_other"] <= 1]
    return {"points": verdicts, "points_with_fastformer": len(compared), "fastformer_fastest": len(won),
            "fastformer_fastest_full_precision": len(won_full_precision),
            "points_with_quantized_rows": len(quantized), "fastformer_quantized_fastest_quantized": len(won_quantized),
            "ratio": "fastformer's median / the other backend's median (> 1: fastformer is slower)"}
