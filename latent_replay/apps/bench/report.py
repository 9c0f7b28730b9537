"""The benchmark's derived figures (ratios, MAC rates, the issue's targets) and its printed table."""
from __future__ import annotations

from typing import Any, Dict, List, Optional

from ...models import mobilenet_v1 as net
from . import probes as core
from .workers import BACK_TRAIN_FACTOR

def _ok(d: Any) -> bool:
    return isinstance(d, dict) and "error" not in d and "skipped" not in d


def derive(results: Dict[str, Any]) -> None:
    """Ratios ours/PyTorch, achieved MAC rates as fractions of the GEMM rate, pool checks, targets."""
    gemm = results["gemm"].get("macs_per_s") if _ok(results["gemm"]) else None
    derived: Dict[str, Any] = {"front": {}, "batch": {}}
    errors = [f"{k}: {v['error']}" for k, v in _walk(results) if isinstance(v, dict) and "error" in v]
    for layer, entry in results["front"].items():
        cost = net.split_cost(layer)
        d: Dict[str, Any] = {"front_macs_per_frame": cost.front_macs}
        ours, theirs = entry["ours"], entry["torch"]
        if _ok(ours):
            cpu = ours["cpu"]
            if gemm:
                d["mac_rate"] = {b: core.mac_fraction(cost.front_macs * t["batch"], t["seconds_median"], gemm)
                                 for b, t in cpu["throughput"].items()}
            if _ok(theirs):
                d["latency_b1_p50_ratio"] = cpu["latency_b1_s"]["p50"] / theirs["latency_b1_s"]["p50"]
                d["throughput_ratio"] = {b: cpu["throughput"][b]["fps"] / theirs["throughput"][b]["fps"]
                                         for b in cpu["throughput"] if b in theirs["throughput"]}
                d["peak_rss_ratio"] = ours["peak_rss_mb"] / theirs["peak_rss_mb"]
        derived["front"][layer] = d
    for layer, entry in results["batch"].items():
        cost = net.split_cost(layer)
        dl: Dict[str, Any] = {}
        theirs = entry.get("torch")
        for storage, ours in entry.items():
            if storage == "torch" or not _ok(ours):
                continue
            d = {}
            p = ours["pool"]
            d["pool_bytes_consistent"] = p["total_bytes"] == p["patterns"] * p["bytes_per_pattern"] + \
                p["labels_bytes"] + p["scale_bytes"]
            steps = ours["iterations"]
            train_macs = steps * (ours["new_per_mb"] + ours["replay_per_mb"]) * BACK_TRAIN_FACTOR * cost.back_macs
            if gemm:
                d["mac_rate_batch"] = core.mac_fraction(ours["n_new"] * cost.front_macs + train_macs,
                                                        ours["batch_s"], gemm)
                d["mac_rate_step"] = core.mac_fraction(
                    (ours["new_per_mb"] + ours["replay_per_mb"]) * BACK_TRAIN_FACTOR * cost.back_macs,
                    ours["step_s"]["p50"], gemm)
            if _ok(theirs):
                d["batch_time_ratio"] = ours["batch_s"] / theirs["batch_s"]
                d["step_time_ratio"] = ours["step_s"]["p50"] / theirs["step_s"]["p50"]
                d["peak_rss_ratio"] = ours["peak_rss_mb"] / theirs["peak_rss_mb"]
            dl[storage] = d
        if _ok(theirs) and gemm:
            torch_macs = theirs["front_frames"] * cost.front_macs + theirs["iterations"] * \
                (theirs["new_per_mb"] + theirs["replay_per_mb"]) * BACK_TRAIN_FACTOR * cost.back_macs
            dl["torch"] = {"mac_rate_batch": core.mac_fraction(torch_macs, theirs["batch_s"], gemm)}
        if _ok(entry.get("fp32")) and _ok(entry.get("uint8")):
            f, u = entry["fp32"], entry["uint8"]
            dl["uint8_vs_fp32"] = {"pool_bytes_ratio": f["pool"]["total_bytes"] / u["pool"]["total_bytes"],
                                   "pattern_bytes_ratio": f["pool"]["bytes_per_pattern"] / u["pool"]["bytes_per_pattern"],
                                   "batch_time_ratio": u["batch_s"] / f["batch_s"],
                                   "peak_rss_ratio": u["peak_rss_mb"] / f["peak_rss_mb"]}
        derived["batch"][layer] = dl
    derived["targets"] = targets(results, derived)
    derived["errors"] = errors
    results["derived"] = derived


def _walk(d: Dict[str, Any], prefix: str = ""):
    for k, v in d.items():
        if isinstance(v, dict):
            yield prefix + k, v
            if "error" not in v:
                yield from _walk(v, prefix + k + ".")


def targets(results: Dict[str, Any], derived: Dict[str, Any]) -> List[Dict[str, Any]]:
    """The issue's targets, each with the figure it is judged on and whether it is met."""
    out: List[Dict[str, Any]] = []
    layer = net.DEFAULT_LATENT_LAYER

    def add(name: str, value: Optional[float], goal: str, met: Optional[bool], why: str = "") -> None:
        out.append({"target": name, "value": value, "goal": goal, "met": met,
                    **({"not_measured": why} if met is None else {})})

    db = derived["batch"].get(layer, {}).get("fp32", {})
    fb = derived["front"].get(layer, {})
    if "batch_time_ratio" in db:
        speedup = 1 / db["batch_time_ratio"]
        add("AR1*-free incremental batch at conv5_4/dw: speed-up over PyTorch", speedup, ">= 2x", speedup >= 2)
        add("AR1*-free incremental batch at conv5_4/dw: peak RSS ours/PyTorch", db["peak_rss_ratio"], "< 1",
            db["peak_rss_ratio"] < 1)
    else:
        add("AR1*-free incremental batch at conv5_4/dw vs PyTorch", None, ">= 2x, lower peak RSS", None,
            "conv5_4/dw or PyTorch not measured")
    if "latency_b1_p50_ratio" in fb:
        speedup = 1 / fb["latency_b1_p50_ratio"]
        add("front conv5_4/dw batch 1 p50: speed-up over PyTorch eager", speedup, ">= 2x", speedup >= 2)
    else:
        add("front conv5_4/dw batch 1 vs PyTorch eager", None, ">= 2x", None, "not measured")
    frac = fb.get("mac_rate", {}).get("32", {}).get("fraction_of_gemm")
    add("front conv5_4/dw batch 32: fraction of the GEMM MAC rate", frac, ">= 0.30",
        None if frac is None else frac >= 0.30, "" if frac is not None else "not measured")
    u = derived["batch"].get(layer, {}).get("uint8_vs_fp32")
    if u:
        add("uint8 pool at conv5_4/dw: pool memory fp32/uint8", u["pool_bytes_ratio"], ">= 4x (patterns; labels "
            "and scales add a little)", u["pattern_bytes_ratio"] >= 4 and u["pool_bytes_ratio"] > 3.5)
        extra = u["batch_time_ratio"] - 1
        add("uint8 pool at conv5_4/dw: extra batch time", extra, "< 5%", extra < 0.05)
    else:
        add("uint8 pool vs fp32", None, "4x less memory, < 5% extra time", None, "fp32 and uint8 not both measured")
    return out


# ---------------------------------------------------------------------------------------------
# The table


def _f(v: Optional[float], fmt: str = ".2f", scale: float = 1.0) -> str:
    return "-" if v is None else format(v * scale, fmt)


def table(results: Dict[str, Any]) -> str:
    m = results["machine"]
    g = results["gemm"]
    lines = [f"machine: {m['cpu']}, {m['cores_usable']} usable core(s) of {m['cores_total']}, "
             f"{m['memory_gib']} GiB, SIMD {'/'.join(m['simd']) or '?'}; load avg {m.get('load_average')}",
             f"threads: {results['threads']} (ORT intra-op and torch.set_num_threads); device {results['device']}; "
             f"{'QUICK' if results['quick'] else 'FULL'} mode; medians of repeated runs on a shared machine",
             f"GEMM fp32 (numpy, best of {g.get('repeats', '?')}): "
             + (f"{g['macs_per_s'] / 1e9:.1f} GMAC/s ({g['gflops']:.1f} GFLOP/s)" if _ok(g) else str(g)), ""]
    lines.append("FRONT (CPU provider)      ours p50/p90/p99 ms     torch p50 ms  speed-up  "
                 "ours fps b32  torch fps b32  fps b128  MAC%GEMM b32  peak RSS MiB ours/torch")
    for layer, e in results["front"].items():
        o, t, d = e["ours"], e["torch"], results["derived"]["front"][layer]
        if not _ok(o):
            lines.append(f"{layer:<12} {o}")
            continue
        lat = o["cpu"]["latency_b1_s"]
        tl = t["latency_b1_s"]["p50"] if _ok(t) else None
        sp = 1 / d["latency_b1_p50_ratio"] if "latency_b1_p50_ratio" in d else None
        fps = o["cpu"]["throughput"]
        tf = t["throughput"].get("32", {}).get("fps") if _ok(t) else None
        lines.append(f"{layer:<12} b1 {lat['p50'] * 1e3:>8.2f}/{lat['p90'] * 1e3:.2f}/{lat['p99'] * 1e3:.2f}"
                     f"   {_f(tl, '.2f', 1e3):>10}  {_f(sp, '.2f'):>7}x  {fps['32']['fps']:>12.1f}  {_f(tf, '.1f'):>13}"
                     f"  {_f(fps.get('128', {}).get('fps'), '.1f'):>8}  "
                     f"{_f(d.get('mac_rate', {}).get('32', {}).get('fraction_of_gemm'), '.1%'):>12}"
                     f"  {o['peak_rss_mb']:.0f}/{_f(t.get('peak_rss_mb') if _ok(t) else None, '.0f')}")
        for prov in ("cuda", "tensorrt"):
            if _ok(o.get(prov)):
                pl = o[prov]["latency_b1_s"]
                lines.append(f"{'':<12} {prov}: b1 p50 {pl['p50'] * 1e3:.2f} ms, b32 {o[prov]['throughput']['32']['fps']:.0f} fps,"
                             f" first run (build) {o[prov]['first_run_s']:.1f} s")
            else:
                info = o.get(prov, {})
                lines.append(f"{'':<12} {prov}: " + (f"ERROR: {info['error']}" if "error" in info
                                                      else info.get("skipped", "skipped")))
    lines.append("")
    lines.append("INCREMENTAL BATCH            new+mem x ep  its  front s  train s  batch s  step p50 s  "
                 "MAC%GEMM  pool MiB  B/pattern  peak RSS MiB  vs torch: time  RSS")
    for layer, e in results["batch"].items():
        dl = results["derived"]["batch"][layer]
        for storage, o in e.items():
            if storage == "torch":
                continue
            if not _ok(o):
                lines.append(f"{layer:<11} {storage:<5} {o}")
                continue
            d = dl.get(storage, {})
            lines.append(
                f"{layer:<11} {o['method']:<7} {storage:<5} {o['n_new']:>4}+{o['memory']:<4}x{o['epochs']}  {o['iterations']:>3}"
                f"  {o['front_s']:>7.2f}  {o['train_s']:>7.2f}  {o['batch_s']:>7.2f}  {o['step_s']['p50']:>10.3f}"
                f"  {_f(d.get('mac_rate_batch', {}).get('fraction_of_gemm'), '.1%'):>8}"
                f"  {o['pool']['total_bytes'] / 2 ** 20:>8.1f}  {o['pool']['bytes_per_pattern']:>9}"
                f"  {o['peak_rss_mb']:>12.0f}  {_f(d.get('batch_time_ratio'), '.2f'):>14}  {_f(d.get('peak_rss_ratio'), '.2f')}")
            b = o["breakdown"]
            lines.append(f"{'':<11}   time split: engine steps ({o['engine']}) {b['engine_steps_s']:.2f} s, minibatch "
                         f"assembly + CWR* + memory update {b['other_s']:.3f} s")
        t = e.get("torch")
        if _ok(t):
            frac = dl.get("torch", {}).get("mac_rate_batch", {}).get("fraction_of_gemm")
            lines.append(
                f"{layer:<11} {'PyTorch':<7} {'fp32':<5} {'':>4} {t['iterations']:>3} its"
                f"  {t['front_s']:>7.2f}  {t['batch_s'] - t['front_s']:>7.2f}  {t['batch_s']:>7.2f}"
                f"  {t['step_s']['p50']:>10.3f}  {_f(frac, '.1%'):>8}  {t['memory_bytes'] / 2 ** 20:>8.1f}"
                f"  {'':>9}  {t['peak_rss_mb']:>12.0f}   (front run on new frames every epoch)")
        elif t is not None:
            lines.append(f"{layer:<11} PyTorch: {t.get('skipped') or t.get('error')}")
        u = dl.get("uint8_vs_fp32")
        if u:
            lines.append(f"{'':<11}   uint8 vs fp32: pool {u['pool_bytes_ratio']:.2f}x smaller, batch time x"
                         f"{u['batch_time_ratio']:.3f}, peak RSS x{u['peak_rss_ratio']:.2f}")
    lines.append(f"\nMAC rates: front = front_macs per frame; back training = {BACK_TRAIN_FACTOR} x back_macs per "
                 f"pattern (forward + backward); ratios are ours/PyTorch (time < 1: we are faster).")
    lines.append("")
    lines.append("TARGETS")
    for t in results["derived"]["targets"]:
        status = "n/a" if t["met"] is None else ("MET" if t["met"] else "NOT MET")
        lines.append(f"  [{status:>7}] {t['target']}: {_f(t['value'], '.3f')} (goal {t['goal']})"
                     + (f" -- {t['not_measured']}" if t.get("not_measured") else ""))
    errs = results["derived"]["errors"]
    if errs:
        lines.append("\nERRORS")
        lines += [f"  {e[:500]}" for e in errs]
    lines.append(f"\ntegrastats: {results['tegrastats'].get('line') or results['tegrastats'].get('reason')}")
    return "\n".join(lines)
