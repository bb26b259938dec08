"""Sections on the recipes' end-to-end runs: the synthetic ASR recipe, streaming, the CTC / attention-decoder /
CR-CTC heads and ONNX export with sherpa-onnx decoding."""
from __future__ import annotations

from .common import RESULTS, Doc, fmt, load_json, recorded, table, wer


def synthetic_recipe(doc: Doc) -> None:
    paths = sorted((RESULTS / "cpu").glob("synthetic_recipe_run_summary*.json")) if (RESULTS / "cpu").exists() else []
    if not paths:
        return
    doc.add("## Synthetic ASR recipe (espeak-ng corpus, 2-core CPU)\n")
    doc.add("`python -m recipes.synthetic.run --device auto` from nothing: corpus, features, tokenizer, "
            "training under a wall-clock budget, decoding of the test set. The recipe and its settings: "
            "[recipes/synthetic/README.md](../recipes/synthetic/README.md).\n")
    rows = []
    for p in paths:
        d = load_json(p)
        t, s = d.get("timings", {}), d.get("settings", {})
        wers = d.get("wer", {})
        rows.append((p.name, d["steps"], fmt(t.get("train_s")), fmt(t.get("total_s")),
                     s.get("decode", {}).get("avg", "-"), wer(wers.get("greedy_search")),
                     wer(wers.get("modified_beam_search"))))
    doc.add(table(["file", "steps", "training s", "whole run s", "decode avg", "test WER % greedy",
                   "test WER % modified beam"], rows, [False, True, True, True, True, True, True]))
    d = load_json(paths[0])
    curve = d.get("loss_curve", [])
    if curve:
        marks = [c for c in curve if c[0] in (100, 500, 1000, 1500, 2000)] + [curve[-1]]
        doc.add("Training loss per frame of the first file, at a few steps: "
                + ", ".join(f"step {int(c[0])}: {c[1]:.3f}" for c in marks) + ".\n")
    doc.files(paths)


def streaming(doc: Doc) -> None:
    path, d = recorded("cpu/streaming_synthetic.json")
    if d is None:
        return
    doc.add("## Streaming: causal model on the synthetic corpus\n")
    tr, dec = d["training"], d["decode"]
    doc.add(f"{d.get('what', '')}. {d['device']}, torch {d['torch']}, {d.get('threads', '?')} thread of "
            f"{d.get('cpu_count', '?')}. Trained {tr['steps']} steps ({fmt(tr['train_s'])} s) with chunk sizes "
            f"{tr['chunk_size']} and left contexts {tr['left_context_frames']}; decoded at chunk "
            f"{dec['chunk_size']}, left context {dec['left_context_frames']}, avg {dec['avg']}, "
            f"{dec.get('num_decode_streams', '?')} streams at once.\n")
    doc.commands([d["command"]])
    methods = sorted({m for v in d["wer"].values() for m in v})
    doc.add(table(["decoding", *[f"test WER % {m}" for m in methods]],
                  [(k.replace("_", " "), *[wer(v.get(m)) for m in methods]) for k, v in d["wer"].items()],
                  [False] + [True] * len(methods)))
    lat, rtf = d.get("latency", {}), d.get("streaming_rtf", {})
    doc.add(f"Latency: chunk {lat.get('chunk_ms')} ms + look-ahead {lat.get('lookahead_ms')} ms (at most "
            f"{lat.get('max_ms')} ms, mean {fmt(lat.get('mean_ms'))} ms). Real-time factor of real streaming: "
            + ", ".join(f"{k} {v}" for k, v in rtf.items()) + f" over {fmt(d.get('streaming_audio_seconds'))} s of audio.\n")
    doc.files([path])


def heads(doc: Doc) -> None:
    path, d = recorded("cpu/heads_synthetic.json")
    if d is None:
        return
    doc.add("## CTC, CTC + attention decoder and CR-CTC on the synthetic corpus\n")
    doc.add(f"{d.get('device', '?')}, torch {d.get('versions', {}).get('torch', '?')}.\n")
    doc.caveats(d)
    doc.commands(h.get("command", "") for h in d["heads"].values())
    methods = sorted({m for h in d["heads"].values() for m in h.get("test_wer_percent", {})})
    rows = [(name, h.get("steps", "-"), fmt(h.get("train_seconds")),
             *[wer(h.get("test_wer_percent", {}).get(m)) for m in methods]) for name, h in d["heads"].items()]
    doc.add(table(["heads", "steps", "training s", *[f"test WER % {m}" for m in methods]], rows,
                  [False, True, True] + [True] * len(methods)))
    ref = d.get("transducer_ctc_landed_run")
    if ref:
        doc.add(f"For comparison, the transducer + CTC run ({ref.get('source', '')}): {ref['steps']} steps, "
                + ", ".join(f"{k} {wer(v)} %" for k, v in ref.get("test_wer_percent", {}).items()) + ".\n")
    doc.files([path])


def sherpa(doc: Doc) -> None:
    paths = sorted((RESULTS / "cpu").glob("sherpa_onnx_synthetic*.json")) if (RESULTS / "cpu").exists() else []
    for path in paths:
        d = load_json(path)
        doc.add(f"## ONNX export and sherpa-onnx decoding: `{path.name}`\n")
        doc.add(f"{d.get('device', '?')}; " + ", ".join(f"{k} {v}" for k, v in sorted(d.get("versions", {}).items()))
                + f". Model: {d.get('model', '?')}. Exported: {', '.join(d.get('exported', []))} in "
                f"{fmt(d.get('export_seconds'))} s.\n")
        doc.caveats(d)
        doc.commands([d.get("command", "")])
        errs = [(kind, out, fmt(v)) for kind, outs in sorted(d.get("onnxruntime_vs_pytorch_relative_error", {}).items())
                for out, v in outs.items()]
        if errs:
            doc.add("onnxruntime against PyTorch, relative error per graph output:\n")
            doc.add(table(["graph", "output", "relative error"], errs, [False, False, True]))
        runs = d.get("sherpa_onnx", {})
        if runs:
            doc.add(f"sherpa-onnx decoding of {d.get('utterances', '?')} test utterances (PyTorch: "
                    + ", ".join(f"{k} {wer(v)} %" for k, v in d.get("pytorch_wer", {}).items()) + "):\n")
            doc.add(table(["model / precision / method", "WER %", "real-time factor", "audio s"],
                          [(k, wer(v.get("wer")), fmt(v.get("rtf")), fmt(v.get("audio_seconds"))) for k, v in runs.items()],
                          [False, True, True, True]))
        agree = d.get("greedy_token_agreement")
        if agree:
            doc.add(f"Greedy token sequences equal to PyTorch's: {agree['same']} of {agree['total']}.\n")
        doc.files([path])
