"""Sections on what runs around the kernels: host overhead per fused-op call, launches per encoder step,
torch.compile (graph breaks, a compiled training loop, recipes/train.py --compile) and the ptxas
compile of every Triton kernel."""
from __future__ import annotations

from typing import Dict

from .common import Doc, fmt, recorded, table

LAUNCH_TARGETS = {"inference_ratio": 0.40, "training_ratio": 0.60}  # fused / reference launches per step


def labelled_entries(doc: Doc, file: str, title: str, intro: str = ""):
    """(path, [(label, entry)] sorted by label) of a results file holding one entry per label
    (bench.harness.write_labelled_entry), after adding the section's title, intro and the file's
    recorded method to doc; (None, []) when the file is absent."""
    path, d = recorded(file)
    if d is None:
        return None, []
    doc.add(title)
    if intro:
        doc.add(intro)
    doc.caveats(d, ("method",))
    return path, [(label, d[label]) for label in sorted(k for k in d if isinstance(d[k], dict))]


def host_overhead(doc: Doc) -> None:
    path, entries = labelled_entries(
        doc, "cpu/host_overhead.json", "## Host overhead per fused-op call (CPU, kernels stubbed)\n",
        "Microseconds of Python/dispatch per call with the Triton launches replaced by a counter: what a GPU run "
        "pays on the host before any kernel runs. Each label is one code version's run.\n")
    if path is None:
        return
    for label, e in entries:
        doc.add(f"### {label} (commit {e.get('git_commit', '?')}, torch {e.get('torch', '?')}, "
                f"threads: {e.get('threads', '?')})\n")
        doc.commands([e.get("command", "")])
        doc.caveats(e, ("note",))
        res = e.get("results_us", {})
        def verdict(r):
            return {True: "yes", False: "no"}.get(r.get("within_targets"), "")

        doc.add(table(["op", "forward µs", "launches", "forward, no grad µs", "backward node µs", "launches",
                       "autograd.grad µs", "within 10 / 15 µs"],
                      [(op, fmt(r.get("forward_us")), fmt(r.get("launches_forward")), fmt(r.get("forward_nograd_us")),
                        fmt(r.get("backward_us")), fmt(r.get("launches_backward")), fmt(r.get("backward_engine_us")),
                        verdict(r))
                       for op, r in res.items()], [False] + [True] * 6 + [False]))
        cal = e.get("calibration_us", {})
        if cal:
            doc.add("Calibration (the floor any autograd-recorded op pays here): "
                    + ", ".join(f"{k.replace('_us', '')} {fmt(v)} µs" for k, v in cal.items()) + ".\n")
    doc.files([path])


def launch_count(doc: Doc) -> None:
    path, entries = labelled_entries(doc, "cpu/launch_count.json", "## Launches per encoder step (CPU interpreter)\n")
    if path is None:
        return
    for label, e in entries:
        doc.add(f"### {label}: Zipformer-{e['preset']}, batch {e['batch']} × {fmt(e['seconds'])} s "
                f"(commit {e.get('git_commit', '?')}, {e.get('device', '?')})\n")
        doc.commands([e.get("command", "")])
        res = e["results"]
        doc.add(table(["step", "aten ops", "Triton launches", "total"],
                      [(k, v["aten_ops"], v["triton_launches"], v["total"]) for k, v in res.items()
                       if isinstance(v, dict)], [False, True, True, True]))
        ratios = []
        for key, limit in LAUNCH_TARGETS.items():
            if key in res:
                ratios.append((key.replace("_ratio", ""), f"{res[key]:.3f}", f"{limit:.2f}",
                               "yes" if res[key] <= limit else "NO"))
        if ratios:
            doc.add("Fused / reference launches against the target:\n")
            doc.add(table(["step", "fused / reference", "target", "met"], ratios, [False, True, True, False]))
    doc.files([path])


def compile_check(doc: Doc) -> None:
    path, d = recorded("cpu/compile_check.json")
    if d is None:
        return
    doc.add("## torch.compile: graph breaks and a compiled training loop\n")
    doc.add(f"torch {d['torch']} on {d['device']} ({d.get('threads', d.get('cpu_threads', '?'))} threads, TRITON_INTERPRET="
            f"{d.get('triton_interpret', '?')}). Whole-model trace with `fullgraph`; the seconds are tracing "
            "time on this machine.\n")
    doc.commands([d["command"]])
    doc.add(table(["backend / mode", "graphs", "graph breaks", "seconds"],
                  [(k, v["graphs"], v["graph_breaks"], fmt(v["seconds"])) for k, v in d["graph_breaks"].items()],
                  [False, True, True, True]))
    if "--steps 0" in d["command"]:
        doc.add("`--steps 0`: the trace only; no compiled training step was run for this record.\n")
    loop = d.get("training_loop")
    if loop:
        doc.add(f"Compiled XS training loop ({loop['dynamo_backend']}, ops backend {loop['ops_backend']}, T and B "
                f"changing every step): {loop['compilations']} compilations over {loop['steps']} steps (target "
                f"<= 3); largest relative difference of a step's loss from the eager loop with device-side "
                f"randomness: {fmt(loop['max_rel_loss_diff'])} (first step {fmt(loop['first_step_rel_loss_diff'])}; "
                "target: equal).\n")
        if "steps_with_equal_random_decisions" in loop:
            doc.add(f"Random decisions ({loop['random_decisions_per_step']} firings per step) equal to eager's in "
                    f"{loop['steps_with_equal_random_decisions']} of {loop['steps']} steps; the loops' losses bitwise "
                    f"equal for the first {loop['steps_bitwise_equal']} steps; each step's loss recomputed by eager "
                    f"from the compiled loop's state at that step: largest relative difference "
                    f"{fmt(loop['max_rel_loss_diff_per_step'])}.\n")
        if "compiled_at_steps" in loop:
            doc.add(f"Steps that compiled: {loop['compiled_at_steps']}; dynamo compile ids of the backend calls: "
                    f"{', '.join(c[0] for c in loop.get('compiles', []))}; recompilations (a guard failed): "
                    f"{len(loop.get('recompilations', []))}.\n")
        for message in loop.get("recompilations", []):
            doc.add("Recompilation: " + " ".join(line.strip() for line in message.splitlines()) + "\n")
    if d.get("note"):
        doc.add(f"Note: {d['note']}\n")
    doc.files([path])


def train_compile(doc: Doc) -> None:
    path, entries = labelled_entries(doc, "cpu/train_compile.json",
                                     "## recipes/train.py --compile end to end (CPU, synthetic quick corpus)\n")
    if path is None:
        return
    for label, e in entries:
        doc.add(f"### compile backend {label} (commit {e.get('git_commit', '?')}, torch {e.get('torch', '?')}, "
                f"{e['threads']} thread(s), ops backend {e['backend']})\n")
        doc.commands([e.get("command", "")])
        rows = []
        for name, r in e["runs"].items():
            valid = r["valid"][-1][1]["valid_loss_per_frame"] if r["valid"] else None
            rows.append((name, r["steps"], fmt(r["train_wall_s"]), fmt(r["loss_curve"][-1][1]), fmt(valid),
                         fmt(r["decode_wall_s"]), fmt(r["test_wer"])))
        doc.add(table(["run", "steps", "training wall s", "last training loss", "last validation loss",
                       "decoding wall s", "test WER %"], rows, [False] + [True] * 6))
        recompiles = e["runs"]["compiled"].get("training_recompilations", [])
        doc.add(f"Recompilations during training: {len(recompiles)}"
                + "".join(f"; {fn}: {guard}" for fn, guard in recompiles)
                + f". Largest relative difference of the per-interval training losses: "
                  f"{fmt(e['max_rel_loss_curve_diff'])} (the runs draw their random decisions differently: "
                  "host-side in eager, device-side compiled).\n")
    doc.files([path])


def ptxas(doc: Doc) -> None:
    path, d = recorded("ptxas/report.json")
    if d is None:
        return
    doc.add("## Ahead-of-time compile of every Triton kernel (ptxas, no GPU needed)\n")
    doc.add(f"{d['compiled']} of {d['kernels']} kernel variants compiled for sm_80/sm_90, {d['spilling']} "
            f"spilling; {d.get('specialisation', '')}. Triton {d['triton']}, commit {d.get('git_commit', '?')}.\n")
    doc.commands([d["command"]])
    groups: Dict[str, dict] = {}
    for r in d["rows"]:
        g = groups.setdefault(r["group"], {"variants": 0, "max_registers": 0, "spill": 0, "max_shared": 0})
        g["variants"] += 1
        g["max_registers"] = max(g["max_registers"], r["registers"])
        g["spill"] += r["spill_stores"] + r["spill_loads"]
        g["max_shared"] = max(g["max_shared"], r["shared"])
    doc.add(table(["kernel file", "compiles", "max registers", "spill bytes", "max shared (B)"],
                  [(k, v["variants"], v["max_registers"], v["spill"], v["max_shared"]) for k, v in sorted(groups.items())],
                  [False, True, True, True, True]))
    doc.add("Every variant's registers, spills, stack and shared memory are in the report.\n")
    doc.files(p for p in (path, path.with_suffix(".md")) if p.exists())
