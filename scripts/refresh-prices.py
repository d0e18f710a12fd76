#!/usr/bin/env python3
"""Refresh crates/core/data/prices.json (the price table embedded in tokenledger) from LiteLLM.

LiteLLM's PyPI wheel ships `litellm/model_prices_and_context_window_backup.json`. This script
takes that file (or a wheel, or downloads the latest wheel with pip when given nothing), keeps
the chat models of the providers coding agents use, and writes the table in the format of
crates/core/src/pricing.rs (USD per token):

  {"profile":"embedded","source":"...","fetched_at":"YYYY-MM-DD",
   "models":{name:{input,output,cache_read?,cache_write?,threshold?,input_above?,...}}}

Usage:
  scripts/refresh-prices.py                       # pip download litellm, convert
  scripts/refresh-prices.py --from FILE.json|FILE.whl [--version X] [--out PATH]
"""
import argparse
import datetime
import glob
import json
import os
import re
import subprocess
import sys
import tempfile
import zipfile

JSON_NAME = "litellm/model_prices_and_context_window_backup.json"

# litellm_provider values worth keeping (chat models used by coding agents).
PROVIDERS = {
    "openai", "anthropic", "gemini", "vertex_ai-language-models", "moonshot", "dashscope",
    "deepseek", "xai", "mistral", "codestral", "zai", "qwen_ai_platform", "minimax",
    "groq", "openrouter",
}
# Only these keep a provider-prefixed name when no bare name exists.
PREFIX_OK = {"moonshot", "dashscope", "deepseek", "xai", "mistral", "codestral", "zai",
             "qwen_ai_platform", "minimax", "gemini"}
MODES = {"chat", "responses", "completion", None}
BEDROCK_ANTHROPIC = re.compile(r"anthropic\.(claude-[a-z0-9.-]+?)(?:-v\d+)?(?::\d+)?")
SKIP_NAME = re.compile(r"(image|audio|tts|whisper|embedding|realtime|transcribe|dall-e|"
                       r"moderation|search-preview|computer-use|-vision|davinci|babbage|"
                       r"ft:|live|veo|imagen|lyria)", re.I)


def load(args):
    if args.src and args.src.endswith(".json"):
        return json.load(open(args.src)), args.version or "unknown", os.path.basename(args.src)
    wheel = args.src
    if not wheel:
        tmp = tempfile.mkdtemp(prefix="litellm-")
        subprocess.run([sys.executable, "-m", "pip", "download", "litellm", "--no-deps",
                        "-q", "-d", tmp], check=True)
        wheel = glob.glob(os.path.join(tmp, "litellm-*.whl"))[0]
    version = args.version or os.path.basename(wheel).split("-")[1]
    with zipfile.ZipFile(wheel) as z:
        return json.loads(z.read(JSON_NAME)), version, JSON_NAME


def price(v):
    inp, out = v.get("input_cost_per_token"), v.get("output_cost_per_token")
    if not isinstance(inp, (int, float)) or not isinstance(out, (int, float)):
        return None
    if inp == 0 and out == 0:
        return None
    p = {"input": inp, "output": out}
    if isinstance(v.get("cache_read_input_token_cost"), (int, float)):
        p["cache_read"] = v["cache_read_input_token_cost"]
    if isinstance(v.get("cache_creation_input_token_cost"), (int, float)):
        p["cache_write"] = v["cache_creation_input_token_cost"]
    tiers = sorted({int(m.group(1)) for k in v
                    for m in [re.fullmatch(r"input_cost_per_token_above_(\d+)k_tokens", k)] if m})
    if tiers:
        k = tiers[0]
        p["threshold"] = k * 1000
        for ours, theirs in [("input_above", "input_cost_per_token"),
                             ("output_above", "output_cost_per_token"),
                             ("cache_read_above", "cache_read_input_token_cost"),
                             ("cache_write_above", "cache_creation_input_token_cost")]:
            val = v.get(f"{theirs}_above_{k}k_tokens")
            if isinstance(val, (int, float)):
                p[ours] = val
    return p


def convert(data):
    models = {}
    for name, v in data.items():
        if not isinstance(v, dict) or name == "sample_spec":
            continue
        prov = v.get("litellm_provider")
        if prov not in PROVIDERS or v.get("mode") not in MODES or SKIP_NAME.search(name):
            continue
        p = price(v)
        if p is None:
            continue
        if "/" in name:
            bare = name.split("/", 1)[1]
            if bare in data or prov not in PREFIX_OK or "/" in bare:
                continue
        models[name] = p
    # Older Anthropic models (Claude Opus 4.1, Sonnet 4, 3.7 Sonnet, ...) are left in LiteLLM
    # only under Bedrock's names. Their list price there (`anthropic.<name>-v1:0`; not the
    # region-prefixed names, which may cost more) is kept under the name Anthropic's API and
    # Claude Code's logs use, when LiteLLM has no entry of that name.
    for name, v in data.items():
        m = BEDROCK_ANTHROPIC.fullmatch(name)
        if not m or not isinstance(v, dict) or v.get("mode") not in MODES:
            continue
        bare = m.group(1)
        if bare in data or bare in models:
            continue
        p = price(v)
        if p is not None:
            models[bare] = p
    return models


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--from", dest="src", help="LiteLLM JSON file or litellm wheel")
    ap.add_argument("--version", help="LiteLLM version (when --from is a JSON file)")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "crates",
                                                  "core", "data", "prices.json"))
    ap.add_argument("--date", default=datetime.date.today().isoformat(),
                    help="fetched_at date to record (default today)")
    args = ap.parse_args()
    data, version, fname = load(args)
    models = convert(data)
    table = {
        "profile": "embedded",
        "source": f"LiteLLM {version} ({fname}, PyPI wheel)",
        "fetched_at": args.date,
        "models": dict(sorted(models.items())),
    }
    text = json.dumps(table, separators=(",", ":"), sort_keys=False)
    # One model per line keeps diffs of a refresh readable.
    text = text.replace(',"models":{', ',"models":{\n').replace('},"', '},\n"')
    with open(args.out, "w") as f:
        f.write(text + "\n")
    print(f"wrote {len(models)} models, {len(text)} bytes to {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
