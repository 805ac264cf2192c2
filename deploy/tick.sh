#!/usr/bin/env bash
# One pipeline tick (docs/deploy.md §4), for cron on the machine that ran `ray up`: it has the
# SSH key and AWS credentials `ray exec` needs. cron gives a bare environment (PATH=/usr/bin:/bin,
# no venv, no RAY_* variables), so everything here is absolute or set here.
#
#   deploy/tick.sh [YYYY-MM-DD]     (default: today in UTC)
#
# Env overrides: NEXT_INTEREST_RAY (the `ray` of the venv with `.[cluster]`),
# NEXT_INTEREST_CONFIG (the config file, relative to the repository root).
set -euo pipefail

REPO="$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/.." && pwd)"
RAY="${NEXT_INTEREST_RAY:-$REPO/.venv/bin/ray}"
CONFIG="${NEXT_INTEREST_CONFIG:-prod.yaml}"
AS_OF="${1:-$(date -u +%F)}"

[[ "$AS_OF" =~ ^[0-9]{4}-[0-9]{2}-[0-9]{2}$ ]] || { echo "tick.sh: bad day '$AS_OF'" >&2; exit 2; }
[[ -x "$RAY" ]] || { echo "tick.sh: no ray at $RAY (set NEXT_INTEREST_RAY)" >&2; exit 2; }

# cluster.yaml resolves its paths from the repository root.
cd "$REPO"
echo "$(date -u +%FT%TZ) tick --as-of $AS_OF --config $CONFIG"
# The job is submitted from the head's container (RAY_AUTH_MODE=token is set there), from the copy
# of the repository the last `ray up` synced: no dashboard tunnel to keep open between ticks.
# `ray job submit` follows the job and exits non-zero when it failed; so does `ray exec`.
exec "$RAY" exec cluster.yaml \
  "cd ~/next-interest && ray job submit --address http://127.0.0.1:8265 --working-dir . \
-- python -m jobs.pipeline tick --as-of $AS_OF --config $CONFIG"
