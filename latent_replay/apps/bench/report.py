"""The benchmark's derived figures (ratios, MAC rates, cross-checks, the issue's targets) and its
printed table."""
from __future__ import annotations

from typing import Any, Dict, Iterator, List, Optional, Tuple

from ...models import mobilenet_v1 as net
from . import probes as core
from .data import fingerprint_distance
from .torch_baseline import VARIANTS
from .workers import BACK_TRAIN_FACTOR, method_for

COMPARE_ROWS = ("step", "ort_training", "bn_fp32", "bn_bf16", "brn", "port")
REFERENCES = (("ort_training", "onnxruntime-training", 2.0), ("bn_fp32", "PyTorch fp32 with fused BN", 1.25),
              ("bn_bf16", "PyTorch bf16 autocast + channels_last", 1.0))  # (row, name, speed-up goal)


def _ok(d: Any) -> bool:
    return isinstance(d, dict) and "error" not in d and "skipped" not in d


def batch_macs(row: Dict[str, Any], cost: Any) -> float:
    """Multiply-adds of one incremental batch: the front over the frames it ran on, and
    BACK_TRAIN_FACTOR x the back's forward for every trained pattern."""
    return row["front_frames"] * cost.front_macs + row["iterations"] * (row["new_per_mb"] + row["replay_per_mb"]) * \
        BACK_TRAIN_FACTOR * cost.back_macs


def derive(results: Dict[str, Any]) -> None:
    """Ratios, achieved MAC rates as fractions of the GEMM rate, pool checks, cross-checks, targets."""
    gemm = results["gemm"].get("macs_per_s") if _ok(results["gemm"]) else None
    arch = net.Architecture(results.get("width", 1.0))
    derived: Dict[str, Any] = {"front": {layer: _derive_front(net.split_cost(layer, arch=arch), e, gemm)
                                         for layer, e in results["front"].items()},
                               "batch": {layer: _derive_batch(net.split_cost(layer, arch=arch), e, gemm)
                                         for layer, e in results["batch"].items()},
                               "compare": {t: _derive_compare(run, arch) for t, run in results.get("compare", {}).items()}}
    derived["targets"] = targets(results, derived)
    derived["errors"] = errors(results)
    results["derived"] = derived


def errors(results: Dict[str, Any]) -> List[str]:
    """Every {'error': ...} in the results, once (a measurement reused in two places counts once)."""
    seen, out = set(), []
    for key, value in _walk(results):
        if "error" in value and id(value) not in seen:
            seen.add(id(value))
            out.append(f"{key}: {value['error']}")
    return out


def _walk(d: Dict[str, Any], prefix: str = "") -> Iterator[Tuple[str, Dict[str, Any]]]:
    for k, v in d.items():
        if isinstance(v, dict):
            yield prefix + k, v
            if "error" not in v:
                yield from _walk(v, prefix + k + ".")


def _derive_front(cost: net.SplitCost, entry: Dict[str, Any], gemm: Optional[float]) -> Dict[str, Any]:
    d: Dict[str, Any] = {"front_macs_per_frame": cost.front_macs}
    ours, theirs = entry["ours"], entry["torch"]
    if not _ok(ours):
        return d
    cpu = ours["cpu"]
    if gemm:
        d["mac_rate"] = {b: core.mac_fraction(cost.front_macs * t["batch"], t["seconds_median"], gemm)
                         for b, t in cpu["throughput"].items()}
    if _ok(theirs):
        d["latency_b1_p50_ratio"] = cpu["latency_b1_s"]["p50"] / theirs["latency_b1_s"]["p50"]
        d["throughput_ratio"] = {b: cpu["throughput"][b]["fps"] / theirs["throughput"][b]["fps"]
                                 for b in cpu["throughput"] if b in theirs["throughput"]}
        d["peak_rss_ratio"] = ours["peak_rss_mb"] / theirs["peak_rss_mb"]
    return d


def _derive_batch(cost: net.SplitCost, entry: Dict[str, Any], gemm: Optional[float]) -> Dict[str, Any]:
    dl: Dict[str, Any] = {}
    for storage, ours in entry.items():
        if not _ok(ours):
            continue
        p = ours["pool"]
        d: Dict[str, Any] = {"pool_bytes_consistent": p["total_bytes"] == p["patterns"] * p["bytes_per_pattern"]
                             + p["labels_bytes"] + p["scale_bytes"]}
        if gemm:
            d["mac_rate_batch"] = core.mac_fraction(batch_macs(ours, cost), ours["batch_s"], gemm)
            d["mac_rate_step"] = core.mac_fraction(
                (ours["new_per_mb"] + ours["replay_per_mb"]) * BACK_TRAIN_FACTOR * cost.back_macs,
                ours["step_s"]["p50"], gemm)
        dl[storage] = d
    if _ok(entry.get("fp32")) and _ok(entry.get("uint8")):
        f, u = entry["fp32"], entry["uint8"]
        dl["uint8_vs_fp32"] = {"pool_bytes_ratio": f["pool"]["total_bytes"] / u["pool"]["total_bytes"],
                               "pattern_bytes_ratio": f["pool"]["bytes_per_pattern"] / u["pool"]["bytes_per_pattern"],
                               "batch_time_ratio": u["batch_s"] / f["batch_s"],
                               "peak_rss_ratio": u["peak_rss_mb"] / f["peak_rss_mb"]}
    return dl


def _derive_compare(run: Dict[str, Any], arch: net.Architecture) -> Dict[str, Any]:
    """Per layer and row: MAC rate, and against the step engine's row: how many times faster the
    step engine is (per batch, per step), peak RSS step/row, and how far apart the trained output
    layers are (`fingerprint_distance`: ~1e-7 for the same algorithm, ~1e-2 for bf16 or BN)."""
    gemm = run["gemm"].get("macs_per_s") if _ok(run["gemm"]) else None
    out: Dict[str, Any] = {}
    for layer, rows in run["layers"].items():
        cost, ref = net.split_cost(layer, arch=arch), rows.get("step")
        d: Dict[str, Any] = {}
        for name, row in rows.items():
            if not _ok(row):
                continue
            e: Dict[str, Any] = {}
            if gemm:
                e["mac_rate_batch"] = core.mac_fraction(batch_macs(row, cost), row["batch_s"], gemm)
            if _ok(ref):
                e["batch_speedup"] = row["batch_s"] / ref["batch_s"]
                e["step_speedup"] = row["batch_step_s"]["p50"] / ref["batch_step_s"]["p50"]
                e["peak_rss_ratio"] = ref["peak_rss_mb"] / row["peak_rss_mb"]
                e["fingerprint_distance"] = fingerprint_distance(ref["head_fingerprint"], row["head_fingerprint"])
            d[name] = e
        out[layer] = d
    return out


# ---------------------------------------------------------------------------------------------
# Targets


def _target(name: str, value: Optional[float], goal: str, met: Optional[bool], why: str = "") -> Dict[str, Any]:
    return {"target": name, "value": value, "goal": goal, "met": met, **({"not_measured": why} if met is None else {})}


def targets(results: Dict[str, Any], derived: Dict[str, Any]) -> List[Dict[str, Any]]:
    """The issue's targets, each with the figure it is judged on and whether it is met."""
    return compare_targets(results, derived) + figure_targets(results, derived)


def _speedup(derived: Dict[str, Any], threads: int, row: str) -> Optional[float]:
    layer = net.DEFAULT_LATENT_LAYER
    return derived["compare"].get(str(threads), {}).get(layer, {}).get(row, {}).get("batch_speedup")


def compare_targets(results: Dict[str, Any], derived: Dict[str, Any]) -> List[Dict[str, Any]]:
    """Step engine vs onnxruntime-training / PyTorch fp32 / PyTorch bf16 on the AR1*-free incremental
    batch at conv5_4/dw, at every thread count; and its scaling: the speed-up at the most threads
    no lower than at the fewest."""
    out = []
    layer = net.DEFAULT_LATENT_LAYER
    counts = results.get("thread_counts", [results["threads"]])
    for t in counts:
        rows = results.get("compare", {}).get(str(t), {}).get("layers", {}).get(layer, {})
        for row, name, goal in REFERENCES:
            what = f"{layer} incremental batch, {t} threads: step engine faster than {name}"
            value = _speedup(derived, t, row)
            why = "" if value is not None else _why_missing(rows, row, layer)
            out.append(_target(what, value, f">= {goal:g}x", None if value is None else value >= goal, why))
    lo, hi = min(counts), max(counts)
    all_cores = " (all cores)" if hi == results["machine"]["cores_usable"] else ""
    for row, name, _ in REFERENCES:
        what = f"{layer}: speed-up over {name} at {hi} threads{all_cores} no lower than at {lo}"
        if lo == hi:
            cores = results["machine"]["cores_usable"]
            out.append(_target(what, None, ">= 1 (ratio of speed-ups)", None,
                               f"one thread count measured ({lo}); this machine has {cores} usable core(s)"))
            continue
        a, b = _speedup(derived, lo, row), _speedup(derived, hi, row)
        value = None if a is None or b is None else b / a
        out.append(_target(what, value, ">= 1 (ratio of speed-ups)", None if value is None else value >= 1,
                           "" if value is not None else "not measured at both thread counts"))
    return out


def _why_missing(rows: Dict[str, Any], row: str, layer: str) -> str:
    for key in (row, "step"):
        r = rows.get(key)
        if isinstance(r, dict) and ("skipped" in r or "error" in r):
            return f"{key}: {r.get('skipped') or 'error'}"
    return f"{layer} not measured"


def figure_targets(results: Dict[str, Any], derived: Dict[str, Any]) -> List[Dict[str, Any]]:
    """Memory and front targets: peak RSS against PyTorch, the front's speed and GEMM fraction, uint8 pool."""
    out = []
    layer = net.DEFAULT_LATENT_LAYER
    t = str(results["threads"])
    rss = derived["compare"].get(t, {}).get(layer, {}).get("bn_fp32", {}).get("peak_rss_ratio")
    out.append(_target(f"{layer} incremental batch: peak RSS step engine / PyTorch fp32", rss, "< 1",
                       None if rss is None else rss < 1, "" if rss is not None else "not measured"))
    fb = derived["front"].get(layer, {})
    sp = 1 / fb["latency_b1_p50_ratio"] if "latency_b1_p50_ratio" in fb else None
    out.append(_target(f"front {layer} batch 1 p50: speed-up over PyTorch eager", sp, ">= 2x",
                       None if sp is None else sp >= 2, "" if sp is not None else "not measured"))
    frac = fb.get("mac_rate", {}).get("32", {}).get("fraction_of_gemm")
    out.append(_target(f"front {layer} batch 32: fraction of the GEMM MAC rate", frac, ">= 0.30",
                       None if frac is None else frac >= 0.30, "" if frac is not None else "not measured"))
    u = derived["batch"].get(layer, {}).get("uint8_vs_fp32")
    if u:
        out.append(_target(f"uint8 pool at {layer}: pool memory fp32/uint8", u["pool_bytes_ratio"],
                           ">= 4x (patterns; labels and scales add a little)",
                           u["pattern_bytes_ratio"] >= 4 and u["pool_bytes_ratio"] > 3.5))
        extra = u["batch_time_ratio"] - 1
        out.append(_target(f"uint8 pool at {layer}: extra batch time", extra, "< 5%", extra < 0.05))
    else:
        out.append(_target("uint8 pool vs fp32", None, "4x less memory, < 5% extra time", None,
                           "fp32 and uint8 not both measured"))
    return out


# ---------------------------------------------------------------------------------------------
# The table


def _f(v: Optional[float], fmt: str = ".2f", scale: float = 1.0) -> str:
    return "-" if v is None else format(v * scale, fmt)


def table(results: Dict[str, Any]) -> str:
    lines = _header(results) + [""] + _front_table(results) + [""] + _batch_table(results)
    if results.get("cuda_variants"):
        lines += [""] + _cuda_table(results["cuda_variants"])
    for t in results.get("compare", {}):
        for layer in results["compare"][t]["layers"]:
            lines += [""] + _compare_table(results, t, layer)
    lines += [""] + _targets_table(results)
    errs = results["derived"]["errors"]
    if errs:
        lines += ["", "ERRORS"] + [f"  {e[:500]}" for e in errs]
    lines.append(f"\ntegrastats: {results['tegrastats'].get('line') or results['tegrastats'].get('reason')}")
    return "\n".join(lines)


def _header(results: Dict[str, Any]) -> List[str]:
    m, g = results["machine"], results["gemm"]
    counts = results.get("thread_counts", [results["threads"]])
    tr = results.get("training", {})
    training = (f"onnxruntime-training {tr['onnxruntime']} in {tr['python']}" if "python" in tr
                else tr.get("skipped") or tr.get("error") or "-")
    return [f"machine: {m['cpu']}, {m['cores_usable']} usable core(s) of {m['cores_total']}, "
            f"{m['memory_gib']} GiB, SIMD {'/'.join(m['simd']) or '?'}; load avg {m.get('load_average')}",
            f"threads: {', '.join(map(str, counts))} (ORT intra-op and torch.set_num_threads; front, pool and "
            f"memory figures at {results['threads']}); device {results['device']}; "
            f"{'QUICK' if results['quick'] else 'FULL'} mode; medians of repeated runs on a shared machine",
            f"versions: onnxruntime {results.get('versions', {}).get('onnxruntime')}, PyTorch "
            f"{results.get('versions', {}).get('torch') or '-'}; ORT-training worker: {training}",
            f"GEMM fp32 (numpy, best of {g.get('repeats', '?')}, {results['threads']} threads): "
            + (f"{g['macs_per_s'] / 1e9:.1f} GMAC/s ({2 * g['macs_per_s'] / 1e9:.1f} GFLOP/s)" if _ok(g) else str(g))]


def _front_table(results: Dict[str, Any]) -> List[str]:
    lines = ["FRONT (CPU provider)      ours p50/p90/p99 ms     torch p50 ms  speed-up  "
             "ours fps b32  torch fps b32  fps b128  MAC%GEMM b32  peak RSS MiB ours/torch"]
    for layer, e in results["front"].items():
        o, t, d = e["ours"], e["torch"], results["derived"]["front"][layer]
        if not _ok(o):
            lines.append(f"{layer:<12} {o}")
            continue
        lat, fps = o["cpu"]["latency_b1_s"], o["cpu"]["throughput"]
        tl = t["latency_b1_s"]["p50"] if _ok(t) else None
        sp = 1 / d["latency_b1_p50_ratio"] if "latency_b1_p50_ratio" in d else None
        tf = t["throughput"].get("32", {}).get("fps") if _ok(t) else None
        lines.append(f"{layer:<12} b1 {lat['p50'] * 1e3:>8.2f}/{lat['p90'] * 1e3:.2f}/{lat['p99'] * 1e3:.2f}"
                     f"   {_f(tl, '.2f', 1e3):>10}  {_f(sp, '.2f'):>7}x  {fps['32']['fps']:>12.1f}  {_f(tf, '.1f'):>13}"
                     f"  {_f(fps.get('128', {}).get('fps'), '.1f'):>8}  "
                     f"{_f(d.get('mac_rate', {}).get('32', {}).get('fraction_of_gemm'), '.1%'):>12}"
                     f"  {o['peak_rss_mb']:.0f}/{_f(t.get('peak_rss_mb') if _ok(t) else None, '.0f')}")
        for prov in ("cuda", "tensorrt"):
            info = o.get(prov, {})
            if _ok(info):
                pl = info["latency_b1_s"]
                lines.append(f"{'':<12} {prov}: b1 p50 {pl['p50'] * 1e3:.2f} ms, b32 {info['throughput']['32']['fps']:.0f}"
                             f" fps, first run (build) {info['first_run_s']:.1f} s")
            else:
                lines.append(f"{'':<12} {prov}: " + (f"ERROR: {info['error']}" if "error" in info
                                                      else info.get("skipped", "skipped")))
    return lines


def _cuda_table(variants: Dict[str, Dict[str, Any]]) -> List[str]:
    """The step engine on CUDA: TF32 or exact fp32, with and without CUDA-graph capture."""
    lines = ["CUDA STEP ENGINE (fp32 pool)   variant          batch s  step p50 ms  graphs  TF32"]
    for layer, rows in variants.items():
        for name, o in rows.items():
            if not _ok(o):
                lines.append(f"{layer:<12} {name:<16} {o}")
                continue
            lines.append(f"{layer:<12} {name:<16} {o['batch_s']:>7.3f}  {o['batch_step_s']['p50'] * 1e3:>11.2f}"
                         f"  {'yes' if o.get('cuda_graph') else 'no':>6}  {'yes' if o.get('tf32') else 'no':>4}")
    return lines


def _batch_table(results: Dict[str, Any]) -> List[str]:
    lines = [f"INCREMENTAL BATCH (step engine, {results['threads']} threads)  new+mem x ep  its  front s  train s  "
             "batch s  step p50 s  MAC%GEMM  pool MiB  B/pattern  peak RSS MiB"]
    for layer, e in results["batch"].items():
        dl = results["derived"]["batch"][layer]
        for storage, o in e.items():
            if not _ok(o):
                lines.append(f"{layer:<11} {storage:<5} {o}")
                continue
            d = dl.get(storage, {})
            lines.append(
                f"{layer:<11} {o['method']:<7} {storage:<5} {'':<17} {o['n_new']:>4}+{o['memory']:<4}x{o['epochs']}"
                f"  {o['iterations']:>3}  {o['front_s']:>7.2f}  {o['train_s']:>7.2f}  {o['batch_s']:>7.2f}"
                f"  {o['step_s']['p50']:>10.3f}  {_f(d.get('mac_rate_batch', {}).get('fraction_of_gemm'), '.1%'):>8}"
                f"  {o['pool']['total_bytes'] / 2 ** 20:>8.1f}  {o['pool']['bytes_per_pattern']:>9}"
                f"  {o['peak_rss_mb']:>12.0f}")
            b = o["breakdown"]
            lines.append(f"{'':<11}   time split: engine steps {b['engine_steps_s']:.2f} s, minibatch "
                         f"assembly + CWR* + memory update {b['other_s']:.3f} s")
        u = dl.get("uint8_vs_fp32")
        if u:
            lines.append(f"{'':<11}   uint8 vs fp32: pool {u['pool_bytes_ratio']:.2f}x smaller, batch time x"
                         f"{u['batch_time_ratio']:.3f}, peak RSS x{u['peak_rss_ratio']:.2f}")
    lines.append(f"MAC rates: front = front_macs per frame; back training = {BACK_TRAIN_FACTOR} x back_macs per "
                 f"pattern (forward + backward).")
    return lines


def row_label(name: str, row: Dict[str, Any]) -> str:
    versions = row.get("versions", {}) if isinstance(row, dict) else {}
    if name == "step":
        return f"step-graph engine, onnxruntime {versions.get('onnxruntime', '')}".rstrip()
    if name == "ort_training":
        return f"ORT-training engine, onnxruntime-training {versions.get('onnxruntime', '')}".rstrip()
    label = VARIANTS[name].label
    return ("(extra) " + label) if name == "port" else label


def _compare_table(results: Dict[str, Any], t: str, layer: str) -> List[str]:
    rows = results["compare"][t]["layers"][layer]
    d = results["derived"]["compare"][t][layer]
    any_row = next((r for r in rows.values() if _ok(r)), {})
    lines = [f"COMPARISON {layer} ({any_row.get('method', method_for(layer))}), {t} threads: "
             f"one incremental batch, {any_row.get('n_new', '?')} new + {any_row.get('memory', '?')} memory x "
             f"{any_row.get('epochs', '?')} epochs = {any_row.get('iterations', '?')} steps of "
             f"{any_row.get('new_per_mb', '?')} + {any_row.get('replay_per_mb', '?')}; each row the fastest of "
             f"{results.get('rounds', 1)} round(s)",
             f"{'':<58}  batch s  front s  step p50 ms  MAC%GEMM  peak RSS MiB  step engine faster: batch   step"
             f"  output layer vs step  load     rounds: batch s"]
    for name in COMPARE_ROWS:
        row = rows.get(name)
        if row is None:
            continue
        label = row_label(name, row)
        if not _ok(row):
            lines.append(f"  {label:<56}  " + (f"ERROR: {row['error'][:300]}" if "error" in row else row["skipped"]))
            continue
        e = d.get(name, {})
        lines.append(f"  {label:<56}  {row['batch_s']:>7.2f}  {row['front_s']:>7.2f}"
                     f"  {row['batch_step_s']['p50'] * 1e3:>11.1f}"
                     f"  {_f(e.get('mac_rate_batch', {}).get('fraction_of_gemm'), '.1%'):>8}  {row['peak_rss_mb']:>12.0f}"
                     f"  {_f(e.get('batch_speedup'), '.2f'):>24}x {_f(e.get('step_speedup'), '.2f'):>5}x"
                     f"  {_f(e.get('fingerprint_distance'), '.1e'):>20}  {_load(row):<7}  "
                     + "/".join(_f(x, ".2f") for x in row.get("rounds_batch_s", [])))
    lines.append("  front once per frame on every side except the (extra) row; step = the back's forward, backward "
                 "and update; output layer vs step: |difference| / |step| of the trained output layer; load: the "
                 "machine's 1-minute load average before/after the row")
    return lines


def _load(row: Dict[str, Any]) -> str:
    load = row.get("load_average_1m") or [None, None]
    return "/".join(_f(x, ".1f") for x in load)



def _targets_table(results: Dict[str, Any]) -> List[str]:
    lines = ["TARGETS"]
    for t in results["derived"]["targets"]:
        status = "n/a" if t["met"] is None else ("MET" if t["met"] else "NOT MET")
        lines.append(f"  [{status:>7}] {t['target']}: {_f(t['value'], '.3f')} (goal {t['goal']})"
                     + (f" -- {t['not_measured']}" if t.get("not_measured") else ""))
    return lines
