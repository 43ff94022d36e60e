#!/usr/bin/env python
"""Collects the phase files of ``benchmarks/gpu_campaign.sh`` into ``campaign.json`` and
``BENCHMARKS-rows.md`` (Markdown rows ready to paste into BENCHMARKS.md).

Standard library only (no torch import: it runs after every phase, in a fraction of a second), so
that the results under ``$OUT`` are complete up to the last finished phase even if a later phase,
or the whole command, is killed.

Inputs, in the campaign's work folder: ``<phase>.json`` (written by ``benchmarks/campaign.py`` as
the phase goes; ``status`` stays ``running`` until the phase ends) and ``<phase>.rc.json`` (written
by the shell script when the phase's process ended: exit code, wall seconds, budget and hard cap).

    python benchmarks/campaign_report.py --work WORK --out OUT [--final]

Top-level fields (mode, date, command, budgets, ...) come from ``CAMPAIGN_META_*`` variables.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
from pathlib import Path

#: the phases in the order the campaign runs them (d before c: c plans its epochs from d's rates)
PHASES = ("prep", "a_train", "a_wrn", "d_concurrency", "c_fidelity", "b_autoattack")
TITLES = {
    "prep": "environment and data",
    "a_train": "(a) training throughput, ResNet-18: AT, VIR-AT, TRADES, VIR-TRADES, virkit vs reference-style loop",
    "a_wrn": "(a) training throughput and peak memory, WideResNet-34-10 VIR-AT",
    "d_concurrency": "(d) aggregate training throughput of 1, 2, 4 processes sharing the GPU",
    "c_fidelity": "(c) short paper-architecture fidelity run, AT vs VIR-AT",
    "b_autoattack": "(b) AutoAttack (standard) virkit vs torchattacks on the same images",
}
KILLED_RC = (124, 137, -9, -15)


def write_json_atomic(path: str | os.PathLike, obj) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=str, allow_nan=True) + "\n")
    os.replace(tmp, path)


def _read(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def phase_status(doc: dict | None, rc: dict | None) -> tuple[str, str | None]:
    """(status, why) of one phase from its result file and the shell's exit record."""
    if rc is None and doc is None:
        return "not run", None
    if rc is not None and rc.get("skipped"):
        return "not run", rc["skipped"]
    if rc is None:  # the phase is running now (a report between phases never sees this) or the shell died
        return ("running" if doc.get("status") == "running" else doc.get("status", "unknown")), None
    code = rc.get("rc")
    killed = code in KILLED_RC
    cap = f"hard cap of {rc.get('cap_s')} s" if rc.get("cap_s") is not None else "hard cap"
    if doc is None:
        if killed:
            return "killed", f"killed at its {cap} before writing any result"
        return "failed", f"exited with code {code} before writing any result"
    current = doc.get("current")
    during = f" during: {current}" if current else ""
    if doc.get("status") == "running":
        if killed:
            return "killed (partial)", f"killed at its {cap}{during}; results up to then are kept"
        return "failed (partial)", f"exited with code {code}{during}; results up to then are kept"
    if code not in (0, None):
        return "failed", f"exited with code {code} after writing status {doc.get('status')!r}"
    return doc.get("status", "ok"), doc.get("status_why")


# ------------------------------------------------------------------------------------------------
# Markdown rows
# ------------------------------------------------------------------------------------------------
def _f(v, fmt="{:.1f}", none="-"):
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return none
    return fmt.format(v)


def _pct(v, none="-"):
    return _f(None if v is None else 100 * v, "{:.1f}", none)


def _setting(r: dict) -> str:
    s = r.get("virkit_precision", "?")
    if r.get("virkit_channels_last"):
        s += ", channels_last"
    s += f", compile {r.get('virkit_compile', '?')}"
    return s


def markdown_rows(doc: dict) -> list[str]:
    """Rows (with their table headers) for BENCHMARKS.md, from the campaign document."""
    phases = doc.get("phases", {})
    env = doc.get("env") or {}
    date = (doc.get("date") or "")[:10]
    dev = env.get("gpu") or env.get("cpu") or "?"
    if doc.get("mode") == "smoke":
        dev = f"{dev} (SMOKE: CPU, tiny budgets, not a measurement)"
    lines = [
        f"<!-- virkit GPU campaign {doc.get('date')} on {dev}; torch {env.get('torch')}, CUDA {env.get('cuda')}, "
        f"cuDNN {env.get('cudnn')}, driver {env.get('driver', '?')}; command: {doc.get('command')}; "
        f"results: campaign.json -->",
        "",
    ]

    a = phases.get("a_train", {}).get("results") or []
    w = phases.get("a_wrn", {}).get("results") or []
    lines += [
        "| date | device | model | method | virkit setting | virkit img/s | reference img/s | ratio | "
        "peak MiB virkit / reference |",
        "| --- | --- | --- | --- | --- | ---: | ---: | ---: | --- |",
    ]
    if not a and not w:
        lines.append(
            f"| {date} | {dev} | ResNet-18 / WRN-34-10 | all | not measured "
            f"({phases.get('a_train', {}).get('status', 'not run')}) | | | | |"
        )
    for r in [*a, *w]:
        ref = _f(r.get("reference_img_s"))
        ratio = _f(r.get("ratio"), "{:.2f}x")
        mem = f"{_f(r.get('virkit_peak_mem_mib'), '{:.0f}')} / {_f(r.get('reference_peak_mem_mib'), '{:.0f}')}"
        lines.append(
            f"| {date} | {dev} | {r.get('model')} | {r.get('method')} | {_setting(r)} | "
            f"{_f(r.get('virkit_img_s'))} | {ref} | {ratio} | {mem} |"
        )
    lines.append("")

    b = phases.get("b_autoattack", {})
    lines += [
        "| date | device | AutoAttack on | virkit | torchattacks (same budget) | virkit speed-up | natural acc |",
        "| --- | --- | --- | --- | --- | ---: | --- |",
    ]
    if "virkit" in b:
        v, t = b["virkit"], b.get("torchattacks") or {}
        on = f"{b.get('model')}, n={v.get('n')} ({b.get('budget_name', '?')})"
        vk = f"{_f(v.get('seconds'))} s (robust {_pct(v.get('robust_acc'))}%)"
        if "seconds" in t:
            ta = f"{_f(t.get('seconds'))} s (robust {_pct(t.get('robust_acc'))}%) on n={t.get('n')}"
            cmp_ = b.get("compare") or {}
            speed = _f(cmp_.get("speedup"), "{:.2f}x")
            if cmp_.get("n") != v.get("n"):
                speed += f" (on the {cmp_.get('n')} images both finished)"
        else:
            ta, speed = f"not measured: {t.get('skipped', 'skipped')}", "-"
        lines.append(f"| {date} | {dev} | {on} | {vk} | {ta} | {speed} | {_pct(b.get('natural_acc'))}% |")
        vc = b.get("virkit_compiled") or {}
        if vc.get("status") == "compiled":
            lines.append(
                f"| {date} | {dev} | {b.get('model')}, n={vc.get('n')}, virkit with the model "
                f"torch.compile'd (compile {_f(vc.get('compile_s'))} s) | {_f(vc.get('seconds'))} s (robust "
                f"{vc.get('robust')}/{vc.get('n')}) | eager virkit on the same images: "
                f"{_f(vc.get('eager_seconds'))} s (robust {vc.get('eager_robust')}) | "
                f"{_f(vc.get('speedup_vs_eager'), '{:.2f}x')} vs eager | |"
            )
    else:
        lines.append(
            f"| {date} | {dev} | ResNet-18, 1,000 images | not measured ({b.get('status', 'not run')}) | | | |"
        )
    lines.append("")

    c = phases.get("c_fidelity", {})
    lines += [
        "| date | device | model | method | epochs (schedule) | natural % | PGD-20 % | AutoAttack % (n) | "
        "train img/s per run (runs at once) |",
        "| --- | --- | --- | --- | --- | ---: | ---: | --- | ---: |",
    ]
    runs = c.get("runs") or []
    if not runs:
        lines.append(
            f"| {date} | {dev} | ResNet-18 | AT, VIR-AT | not measured ({c.get('status', 'not run')}) | | | | |"
        )
    for r in runs:
        ev = r.get("eval") or {}
        sched = c.get("schedule") or {}
        ep = (
            f"{r.get('epochs_done')}/{sched.get('epochs')} (lr /10 after {sched.get('lr_milestones')}, "
            f"reweight from {sched.get('reweight_start')})"
        )
        aa = ev.get("aa")
        aa_s = f"{_pct(aa)} (n={ev.get('aa_n')})" if aa is not None else "-"
        lines.append(
            f"| {date} | {dev} | {c.get('model')} | {r.get('method')} | {ep} | {_pct(ev.get('natural'))} | "
            f"{_pct(ev.get('pgd20'))} | {aa_s} | {_f(r.get('train_img_s_mean'), '{:.0f}')} "
            f"({c.get('concurrent_runs')}) |"
        )
    lines.append("")

    d = phases.get("d_concurrency", {})
    lines += [
        "| date | device | processes | model, method (batch, attack) | aggregate img/s | per process img/s | "
        "vs 1 process |",
        "| --- | --- | ---: | --- | ---: | --- | ---: |",
    ]
    levels = d.get("levels") or []
    if not levels:
        lines.append(
            f"| {date} | {dev} | 1, 2, 4 | ResNet-18 VIR-AT | not measured ({d.get('status', 'not run')}) | | |"
        )
    for lv in levels:
        per = ", ".join(_f(x, "{:.0f}") for x in lv.get("per_process_img_s") or [])
        what = (
            f"{d.get('model')}, {d.get('method')} ({d.get('batch_size')}, PGD-{d.get('attack_steps')}, "
            f"{d.get('precision')}, compile off)"
        )
        lines.append(
            f"| {date} | {dev} | {lv.get('processes')} | {what} | {_f(lv.get('aggregate_img_s'), '{:.0f}')} "
            f"| {per} | {_f(lv.get('vs_1_process'), '{:.2f}x')} |"
        )
    return lines


# ------------------------------------------------------------------------------------------------
def build(work: Path, meta: dict) -> dict:
    phases, skipped = {}, []
    prep = _read(work / "prep.json") or {}
    for p in PHASES:
        doc, rc = _read(work / f"{p}.json"), _read(work / f"{p}.rc.json")
        status, why = phase_status(doc, rc)
        entry = dict(doc or {})
        entry.update({"title": TITLES[p], "status": status, "why": why})
        if rc is not None:
            entry.update({k: rc.get(k) for k in ("rc", "wall_s", "budget_s", "cap_s") if k in rc})
        phases[p] = entry
        if status == "not run" and why:
            skipped.append({"phase": p, "what": "whole phase", "why": why})
        elif status not in ("ok", "running", "not run"):
            skipped.append({"phase": p, "what": "rest of the phase", "why": why or status})
        for s in (doc or {}).get("skipped", []):
            skipped.append({"phase": p, **s})
    doc = {
        "campaign": "virkit benchmarks/gpu_campaign.sh",
        "format": 1,
        **meta,
        "device": (prep.get("env") or {}).get("gpu") or (prep.get("env") or {}).get("cpu"),
        "env": prep.get("env"),
        "data": prep.get("data"),
        "phase_order": list(PHASES),
        "phases": phases,
        "skipped": skipped,
    }
    doc["markdown"] = markdown_rows(doc)
    return doc


def meta_from_env(environ=None) -> dict:
    """The top-level fields the shell script exports as ``CAMPAIGN_META_<NAME>`` (``BUDGETS`` as
    ``phase=soft:cap,...``; numbers as numbers)."""
    environ = os.environ if environ is None else environ
    meta: dict = {}
    for k, v in environ.items():
        if not k.startswith("CAMPAIGN_META_"):
            continue
        key = k[len("CAMPAIGN_META_") :].lower()
        if key == "budgets":
            meta[key] = {}
            for item in filter(None, v.split(",")):
                name, _, sc = item.partition("=")
                soft, _, cap = sc.partition(":")
                meta[key][name] = {"budget_s": float(soft), "cap_s": float(cap)}
        elif key.endswith("_s"):
            try:
                meta[key] = float(v)
            except ValueError:
                meta[key] = v
        elif key == "wheels":
            meta[key] = [w for w in v.split(":") if w]
        else:
            meta[key] = v
    if "git_commit" in meta:
        meta["git"] = {"commit": meta.pop("git_commit"), "dirty": bool(meta.pop("git_dirty", ""))}
    return meta


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description="collect the campaign's phase files into campaign.json + rows")
    p.add_argument("--work", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--final", action="store_true", help="also print the rows and a phase summary")
    args = p.parse_args(argv)
    work, out = Path(args.work), Path(args.out)
    meta = meta_from_env()
    meta["report_written"] = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    doc = build(work, meta)
    write_json_atomic(out / "campaign.json", doc)
    tmp = out / ".BENCHMARKS-rows.md.tmp"
    tmp.write_text("\n".join(doc["markdown"]) + "\n")
    os.replace(tmp, out / "BENCHMARKS-rows.md")
    if args.final:
        print("\n".join(doc["markdown"]))
        print("\nphase            status             wall s  cap s  why")
        for name, ph in doc["phases"].items():
            print(
                f"{name:16s} {ph['status']:18s} {_f(ph.get('wall_s'), '{:6.0f}', '     -')}  "
                f"{_f(ph.get('cap_s'), '{:5.0f}', '    -')}  {ph.get('why') or ''}"
            )
        for s in doc["skipped"]:
            print(f"skipped [{s['phase']}] {s.get('what')}: {s.get('why')}")
    return doc


if __name__ == "__main__":
    main()
