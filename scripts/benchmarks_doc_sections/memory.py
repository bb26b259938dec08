"""The section on memory saved for backward: bytes per backend counted offline, the seed and batch-count
sweeps, and which modules save the most."""
from __future__ import annotations

from pathlib import Path

from .common import RESULTS, Doc, command, fmt, load_json, table


def saved_bytes(doc: Doc) -> None:
    cpu = RESULTS / "cpu"
    simple = sorted(p for p in cpu.glob("saved_bytes_*.json") if "breakdown" not in p.name) if cpu.exists() else []
    breakdown = sorted(cpu.glob("saved_bytes_breakdown_*.json")) if cpu.exists() else []
    if not simple and not breakdown:
        return
    doc.add("## Memory saved for backward (CPU, counted offline)\n")
    doc.add("Bytes the autograd graph keeps for backward in one training forward (saved_tensors_hooks, each "
            "storage once, parameters excluded), fp32, on fake tensors unless stated: a property of the "
            "code, not of a device.\n")
    rows = []
    for p in simple:
        d = load_json(p)
        if "MiB" in d:
            ref = d["MiB"].get("reference/auto")
            for k, v in d["MiB"].items():
                ratio = d.get("over_reference", {}).get(k, (v / ref) if ref else None)
                rows.append((p.name, f"{d['preset']}, {fmt(d['seconds'])} s, batch {d['batch']}", k, fmt(v),
                             "-" if ratio is None else f"{ratio:.2f}", command(d["command"])))
        else:
            what = f"{d['preset']}, {fmt(d['seconds'])} s, batch {d['batch']}, attention {d.get('attention', '?')}"
            rows.append((p.name, what, "reference", fmt(d["reference_MiB"]), "1.00", command(d["command"])))
            rows.append((p.name, what, "fused", fmt(d["triton_MiB"]), f"{d['triton_over_reference']:.2f}",
                         command(d["command"])))
    doc.add(table(["file", "case", "backend / attention mode", "MiB", "fused / reference", "command"], rows,
                  [False, False, False, True, True, False]))
    for p in simple:
        d = load_json(p)
        if d.get("sweep"):
            ratios = [s["triton_over_reference"] for s in d["sweep"]]
            seeds = ", ".join(str(x) for x in sorted({s["seed"] for s in d["sweep"]}))
            counts = ", ".join(fmt(x) for x in sorted({s["batch_count"] for s in d["sweep"]}))
            doc.add(f"`{p.name}` sweeps seeds {seeds} × batch counts {counts} (which Balancers, Whitens "
                    f"and layer skips fire): fused / reference from {min(ratios):.2f} to {max(ratios):.2f}.\n")
    for p in breakdown:
        d = load_json(p)
        doc.add(f"### Who saves what: `{p.name}`\n")
        doc.add(f"{d['preset']}, {fmt(d['seconds'])} s, batch {d['batch']}, attention mode "
                f"{d.get('attention_mode', '?')}. The largest savers per backend (module, the function that "
                "saved, storages, MiB):\n")
        doc.commands([d.get("command", "")])
        for backend, b in sorted(d["backends"].items()):
            top = b.get("by_site", [])[:8]
            doc.add(f"{backend}: {fmt(b['MiB'])} MiB in all.\n")
            doc.add(table(["module", "saved by", "storages", "MiB"],
                          [(s["module"], saver(s["site"]), s["storages"], fmt(s["MiB"])) for s in top],
                          [False, False, True, True]))
    doc.files([*simple, *breakdown])


def saver(site: str) -> str:
    """'zipformer_fast/nn/feedforward.py:35 forward' -> 'feedforward.forward' (file and function)."""
    where, _, func = site.partition(" ")
    return f"{Path(where.split(':')[0]).stem}.{func}"
