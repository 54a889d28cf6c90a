#!/usr/bin/env bash
# Static analysis of the ledger with Slither, offline, through the project's solcjs shim.
#
#   tools/slither.sh        analyses contracts/*.sol (today: contracts/MeteringLedger.sol)
#
# 1. Creates (or reuses) .venv-slither with slither-analyzer pinned exactly. It is a venv of
#    its own because eth-brownie pins exact versions in .venv that slither's deps may not share.
# 2. Writes the solc standard-JSON input medmeter compiles and runs slither on it with crytic-compile's
#    `solc-json` platform: the shim (solcjs from node_modules) only speaks --standard-json, so
#    the default `solc` platform (--combined-json) cannot use it. No compiler is downloaded.
# 3. Applies the triage in slither.config.json (each exclusion is justified in docs/security.md,
#    section "Static analysis") and exits non-zero while any untriaged finding remains.
#
# Exit status: 0 no untriaged finding; 1 untriaged findings; 2 setup or compilation failure.
# Results: .medmeter/slither/results.json (slither's JSON output of the last run).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

SLITHER_VERSION=0.11.6     # newest on PyPI when pinned; installs on Python 3.11
CRYTIC_COMPILE_VERSION=0.4.2   # owns the solc-json platform this script relies on
SOLC_VERSION=0.8.28        # brownie-config.yaml, src/medmeter/compiler.py
VENV=$ROOT/.venv-slither
PYTHON=${PYTHON:-$(command -v python3.11 || command -v python3)}
OUT_DIR=$ROOT/.medmeter/slither

die() { echo "slither.sh: $*" >&2; exit 2; }

# --- 1. the venv -------------------------------------------------------------------------------
stamp=$VENV/.installed-slither-$SLITHER_VERSION-crytic-$CRYTIC_COMPILE_VERSION
if [ ! -f "$stamp" ]; then
  [ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV" || die "cannot create $VENV with $PYTHON"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check \
    "slither-analyzer==$SLITHER_VERSION" "crytic-compile==$CRYTIC_COMPILE_VERSION" \
    || die "pip could not install slither-analyzer==$SLITHER_VERSION into $VENV"
  rm -f "$VENV"/.installed-slither-*
  touch "$stamp"
fi

# --- 2. the compiler shim ----------------------------------------------------------------------
# Installed by `make install` (medmeter toolchain install). Never solc-select: it downloads.
SOLC=${SOLC:-}
if [ -z "$SOLC" ]; then
  for candidate in "$ROOT/.medmeter/solc-bin/solc-v$SOLC_VERSION" "$HOME/.solcx/solc-v$SOLC_VERSION"; do
    if [ -x "$candidate" ]; then SOLC=$candidate; break; fi
  done
fi
[ -n "$SOLC" ] && [ -x "$SOLC" ] || die "no solc-v$SOLC_VERSION shim found: run 'make install' first"
"$SOLC" --version | grep -q "Version: $SOLC_VERSION" || die "$SOLC is not solc $SOLC_VERSION"

# --- 3. standard-JSON input and the run --------------------------------------------------------
# The input is the one `medmeter` compiles (src/medmeter/compiler.py: sources, remappings, optimizer,
# evmVersion, viaIR), taken from the project's own venv so the two cannot drift apart. Its
# outputSelection is dropped: crytic-compile then asks for the AST and source maps it needs.
[ -x "$ROOT/.venv/bin/python" ] || die ".venv is missing: run 'make install' first"
mkdir -p "$OUT_DIR"
input=$OUT_DIR/input.json
results=$OUT_DIR/results.json
rm -f "$results"   # slither refuses to overwrite its --json file
"$ROOT/.venv/bin/python" - "$ROOT" "$input" <<'PY' || die "cannot build the compiler input with medmeter.toolchain.compiler"
import json, sys
from pathlib import Path
from medmeter.toolchain.compiler import standard_json_input
from medmeter.workspace import Workspace
compiler_input = standard_json_input(Workspace(Path(sys.argv[1])))
del compiler_input["settings"]["outputSelection"]
Path(sys.argv[2]).write_text(json.dumps(compiler_input))
PY

set +e
"$VENV/bin/slither" "$input" \
  --compile-force-framework solc-json \
  --solc "$SOLC" \
  --solc-working-dir "$ROOT" \
  --config-file "$ROOT/slither.config.json" \
  --json "$results"
status=$?
set -e

# --- 4. verdict --------------------------------------------------------------------------------
[ -s "$results" ] || die "slither produced no results (exit $status): see the messages above"
"$VENV/bin/python" - "$results" <<'PY'
import json, sys
out = json.load(open(sys.argv[1]))
if not out.get("success"):
    print(f"slither.sh: analysis failed: {out.get('error')}", file=sys.stderr)
    sys.exit(2)
found = out.get("results", {}).get("detectors", [])
for r in found:
    where = next((e["source_mapping"] for e in r["elements"] if e.get("source_mapping")), {})
    lines = where.get("lines") or [0]
    print(f"UNTRIAGED {r['check']} ({r['impact']}/{r['confidence']}) "
          f"{where.get('filename_relative', '?')}#{lines[0]}: {r['description'].splitlines()[0]}")
print(f"slither.sh: {len(found)} untriaged finding(s); triage lives in slither.config.json")
sys.exit(1 if found else 0)
PY
