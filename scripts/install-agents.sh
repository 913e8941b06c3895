#!/usr/bin/env bash
# Installs the pinned real agent CLIs (Claude Code, Codex, Gemini CLI) from the
# npm registry for the end-to-end tests (issue 12), with the committed
# lockfile in crates/providers/agents/.
#
#   scripts/install-agents.sh                 # into target/agents
#   PANORAMA_AGENTS_DIR=/cache/agents scripts/install-agents.sh
#
# The tests in crates/gateway/tests/real_agents.rs look in the same folder
# (PANORAMA_AGENTS_DIR, default <workspace>/target/agents) and run this
# script themselves when the CLIs are missing. Exit status: 0 installed (or
# already up to date); 3 the npm registry is unreachable (the tests then skip
# and say so); anything else is a real failure.
#
# Install scripts are skipped (--ignore-scripts): every CLI ships its native
# part as a prebuilt optional dependency, so nothing needs building; Claude
# Code's postinstall (it only links that binary into place) is run by hand.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
src="$root/crates/providers/agents"
dest="${PANORAMA_AGENTS_DIR:-$root/target/agents}"

if ! command -v npm >/dev/null 2>&1; then
  echo "install-agents: npm not found; install Node.js 20+ with npm (apt-get install nodejs npm)" >&2
  exit 1
fi
mkdir -p "$dest"
stamp="$dest/.installed-lock"
if [ -x "$dest/node_modules/.bin/claude" ] && [ -x "$dest/node_modules/.bin/codex" ] \
  && [ -x "$dest/node_modules/.bin/gemini" ] && cmp -s "$stamp" "$src/package-lock.json"; then
  echo "install-agents: up to date in $dest" >&2
  exit 0
fi
cp "$src/package.json" "$src/package-lock.json" "$dest/"
rm -f "$stamp"
if ! npm ping >/dev/null 2>&1; then
  echo "install-agents: the npm registry is unreachable (npm ping failed); real agent CLIs NOT installed" >&2
  exit 3
fi
echo "install-agents: npm ci in $dest" >&2
(cd "$dest" && npm ci --no-audit --no-fund --ignore-scripts)
# Claude Code's only install step: it links its platform binary (from the
# optional dependency npm just installed) into bin/claude.exe. Local, no network.
(cd "$dest" && node node_modules/@anthropic-ai/claude-code/install.cjs)
for cli in claude codex gemini; do
  "$dest/node_modules/.bin/$cli" --version >/dev/null \
    || { echo "install-agents: $cli --version failed after install" >&2; exit 1; }
done
cp "$src/package-lock.json" "$stamp"
echo "install-agents: installed $(cd "$dest" && for c in claude codex gemini; do printf '%s ' "$(node_modules/.bin/$c --version | head -1)"; done)" >&2
