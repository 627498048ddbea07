#!/usr/bin/env python3
"""Cross-checks test/fixtures/llama/reference.json with transformers + PEFT themselves.

The reference was made by an independent float64 implementation (see test/fixtures/llama/README.md),
never by PyTorch. This recomputes every case with transformers' own LlamaForCausalLM /
Qwen2ForCausalLM and PEFT's own adapters, in float64 and in float32, on the CPU:
  - the last prompt position's logits: relative error ||ours - ref|| / ||ref|| and the top-5 ids;
  - the 20 greedy tokens, each step recomputing the whole sequence (no KV cache), as the reference did;
  - the smallest top-2 gap along the greedy path against the case's min_top2_gap;
  - the tokenizer: tokenizer.json applied to the text (no special tokens) against the case's ids;
  - a control: the adapter cases through the base model alone must miss by far (the adapter matters).
BitFit is no PEFT type: its safetensors file holds new absolute values of bias tensors under their
Hugging Face names, copied into the model here. "float64" is transformers' float64: its RMSNorm and
eager softmax compute in float32 internally, so expect ~1e-7, not 1e-15.

  python3 scripts/crosscheck-llama.py [--out results.json]
Exit code 1 when a case misses the bar (float64 logits within 1e-4 relative and greedy identical).
"""
import argparse
import base64
import json
import os
import sys
import time
import traceback

import numpy as np
import torch
from safetensors.torch import load_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIX = os.path.join(ROOT, "test", "fixtures", "llama")
BAR = 1e-4


def ref_logits(case):
    return np.frombuffer(base64.b64decode(case["last_logits_f32_b64"]), dtype="<f4").astype(np.float64)


def rel_err(a, b):
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def top5(x):
    return [int(i) for i in np.argsort(-x, kind="stable")[:5]]


def load(model_name, adapter, dtype):
    """The base model in `dtype`, with the adapter applied the way PEFT (or, for BitFit, HF naming) says."""
    from transformers import AutoModelForCausalLM

    path = os.path.join(FIX, model_name)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, attn_implementation="eager")
    if adapter is not None:
        adir = os.path.join(path, "adapters", adapter)
        cfg = json.load(open(os.path.join(adir, "adapter_config.json")))
        if cfg["peft_type"] == "BITFIT":
            assert cfg.get("bias_values") == "absolute", cfg
            params = dict(model.named_parameters())
            for name, value in load_file(os.path.join(adir, "adapter_model.safetensors")).items():
                assert name in params and params[name].shape == value.shape, name
                with torch.no_grad():
                    params[name].copy_(value.to(dtype))
        else:
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, adir)
    model = model.to(dtype).eval()
    return model


@torch.no_grad()
def last_logits(model, ids):
    out = model(input_ids=torch.tensor([ids], dtype=torch.long))
    return out.logits[0, -1].double().numpy()


@torch.no_grad()
def greedy(model, ids, n):
    seq, tokens, gap = list(ids), [], float("inf")
    for _ in range(n):
        x = last_logits(model, seq)
        a, b = np.sort(x)[-2:]
        gap = min(gap, float(b - a))
        t = int(np.argmax(x))
        tokens.append(t)
        seq.append(t)
    return tokens, gap


def first_diff(got, want):
    for i in range(max(len(got), len(want))):
        if i >= len(got) or i >= len(want) or got[i] != want[i]:
            return f"{i}/{len(want)}"
    return "ok"


def table(headers, rows):
    cells = [headers] + [[str(c) for c in r] for r in rows]
    w = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    line = lambda r: "| " + " | ".join(c.ljust(w[i]) for i, c in enumerate(r)) + " |"
    print("\n".join([line(cells[0]), "| " + " | ".join("-" * x for x in w) + " |"] + [line(r) for r in cells[1:]]), flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out")
    args = ap.parse_args()
    import peft
    import transformers

    torch.set_num_threads(min(8, os.cpu_count() or 1))
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, peft {peft.__version__}, numpy {np.__version__}", flush=True)
    cases = json.load(open(os.path.join(FIX, "reference.json")))["cases"]
    groups = {}
    for i, c in enumerate(cases):
        groups.setdefault((c["model"], c["adapter"]), []).append(i)

    try:
        from tokenizers import Tokenizer

        toks = {m: Tokenizer.from_file(os.path.join(FIX, m, "tokenizer.json")) for m in {c["model"] for c in cases}}
    except Exception as e:  # the tokenizer check is a side check: report, go on
        print(f"tokenizer check skipped: {e!r}", flush=True)
        toks = {}

    res = [dict(model=c["model"], adapter=c["adapter"] or "base", text=c["text"]) for c in cases]
    t0 = time.time()
    for dtype, tag in ((torch.float64, "64"), (torch.float32, "32")):
        for (m, a), idx in groups.items():
            try:
                model = load(m, a, dtype)
                if tag == "64":
                    print(f"{m} {a or 'base'}: {type(model).__name__}, rope {getattr(model.config, 'rope_parameters', None) or getattr(model.config, 'rope_theta', None)}", flush=True)
                base = load(m, None, dtype) if (a is not None and tag == "64") else None
                for i in idx:
                    c, r = cases[i], res[i]
                    want = ref_logits(c)
                    got = last_logits(model, c["ids"])
                    r[f"err{tag}"] = rel_err(got, want)
                    r[f"top5_{tag}"] = top5(got) == c["top5"]
                    g, gap = greedy(model, c["ids"], len(c["greedy"]))
                    r[f"greedy{tag}"] = first_diff(g, c["greedy"])
                    r[f"gap{tag}"] = gap
                    if base is not None:
                        r["control"] = rel_err(last_logits(base, c["ids"]), want)
                    if tag == "64" and c["model"] in toks:
                        r["tokenizer"] = "ok" if toks[c["model"]].encode(c["text"], add_special_tokens=False).ids == c["ids"] else "DIFF"
            except Exception:
                traceback.print_exc()
                for i in idx:
                    res[i][f"greedy{tag}"] = res[i].get(f"greedy{tag}", "ERROR")
        print(f"float{tag} done, {time.time() - t0:.1f} s", flush=True)

    failed = 0
    rows = []
    for c, r in zip(cases, res):
        ok = r.get("err64", 1) < BAR and r.get("greedy64") == "ok"
        r["ok"] = ok
        failed += not ok
        e = lambda k: f"{r[k]:.2e}" if k in r else "-"
        rows.append([r["model"], r["adapter"], json.dumps(c["text"][:20], ensure_ascii=False), e("err64"), e("err32"),
                     "same" if r.get("top5_64") and r.get("top5_32") else "DIFF", r.get("greedy64", "-"), r.get("greedy32", "-"),
                     f"{c['min_top2_gap']:.2e}/{r['gap64']:.2e}" if "gap64" in r else "-", e("control"), r.get("tokenizer", "-"), "ok" if ok else "FAIL"])
    print("\nevery case (greedy: 'ok' or first differing token / length; gap: reference's min_top2_gap / ours; control: the base model alone on an adapter case)")
    table(["model", "adapter", "text", "rel err f64", "rel err f32", "top-5", "greedy f64", "greedy f32", "min top-2 gap ref/ours", "control", "tokenizer", "ok"], rows)

    summary = []
    for (m, a), idx in groups.items():
        rs = [res[i] for i in idx]
        mx = lambda k: f"{max((r[k] for r in rs if k in r), default=float('nan')):.2e}"
        summary.append([m, a or "base", len(rs), mx("err64"), mx("err32"), f"{sum(r.get('greedy64') == 'ok' for r in rs)}/{len(rs)}",
                        f"{sum(r.get('greedy32') == 'ok' for r in rs)}/{len(rs)}", f"{min((r['control'] for r in rs if 'control' in r), default=float('nan')):.2e}" if a else "-",
                        "ok" if all(r["ok"] for r in rs) else "FAIL"])
    print(f"\nsummary: transformers + PEFT against reference.json (bar: float64 logits < {BAR} relative, greedy identical)")
    table(["model", "adapter", "cases", "max rel err f64", "max rel err f32", "greedy f64", "greedy f32", "min control err", "verdict"], summary)
    print(f"{len(cases) - failed}/{len(cases)} cases agree; largest float64 relative error {max((r['err64'] for r in res if 'err64' in r), default=float('nan')):.2e}", flush=True)
    if args.out:
        json.dump(res, open(args.out, "w"), indent=1)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
