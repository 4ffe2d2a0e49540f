#!/usr/bin/env bash
# The original Attune pack API's "Testing Quick Start" and "Complete Workflow
# Example", run against the REST gateway. Only the host and the pack source differ
# from the original examples, and the token comes from the login endpoint instead of
# `attune auth token`.
#
# Environment:
#   API          base URL, e.g. http://127.0.0.1:8080
#   EMAIL        login e-mail
#   PASSWORD     login password
#   PACK_SOURCE  a local pack directory the server may read (the original example's "aws")
#   DEST         download destination directory (the original example's /tmp/packs)
#   BASE         packs base directory for build-envs and register-batch
#   CURL_MAX_TIME  optional, seconds per request (default 600)
#
# Needs bash, curl and jq. Prints OK when every step passed; otherwise exits
# non-zero with a message naming the step, the expectation and the response.
#
# jq programs are single-quoted on purpose: `$p`, `$ref`, `$base` are jq variables.
# shellcheck disable=SC2016
set -euo pipefail

: "${API:?set API to the server base URL, e.g. http://127.0.0.1:8080}"
: "${EMAIL:?set EMAIL to the login e-mail}"
: "${PASSWORD:?set PASSWORD to the login password}"
: "${PACK_SOURCE:?set PACK_SOURCE to a local pack directory}"
: "${DEST:?set DEST to the download destination directory}"
: "${BASE:?set BASE to the packs base directory}"
API=${API%/}
BASE=${BASE%/}
MAX_TIME=${CURL_MAX_TIME:-600}

for tool in curl jq; do
  command -v "$tool" >/dev/null || { echo "workflow.sh: FAIL: $tool is not installed" >&2; exit 1; }
done

fail() {
  echo "workflow.sh: FAIL: $*" >&2
  exit 1
}

# post PATH JSON [curl options...]
# POSTs JSON to $API$PATH; sets BODY (response body), CODE (HTTP status) and
# CTYPE (response Content-Type).
BODY='' CODE='' CTYPE=''
post() {
  local path=$1 data=$2 out
  shift 2
  out=$(curl -sS -X POST "$API$path" \
    --max-time "$MAX_TIME" \
    -H 'Content-Type: application/json' \
    --data-binary "$data" \
    -w '\n%{http_code} %{content_type}' \
    "$@") || fail "POST $path: curl failed (is the server at $API up?)"
  BODY=${out%$'\n'*}
  local tail=${out##*$'\n'}
  CODE=${tail%% *}
  CTYPE=${tail#* }
}

# expect_code STEP CODE: the last response had this HTTP status.
expect_code() {
  [[ $CODE == "$2" ]] || fail "$1: expected HTTP $2, got HTTP $CODE: $BODY"
}

# check STEP FILTER [jq options...]: FILTER is true for the last response body.
check() {
  local step=$1 filter=$2
  shift 2
  jq -e "$@" "$filter" >/dev/null 2>&1 <<<"$BODY" \
    || fail "$step: expected \`$filter\` to hold (HTTP $CODE): $BODY"
}

# ---------------------------------------------------------------------------
# Get a token ("Testing Quick Start" step 2).
post /api/v1/auth/login "$(jq -cn --arg email "$EMAIL" --arg password "$PASSWORD" \
  '{email: $email, password: $password}')"
expect_code login 200
check login '.data.access_token | type == "string" and length > 0'
check login '.data.token_type == "Bearer"'
check login '.data.expires_in | type == "number" and . > 0'
TOKEN=$(jq -r '.data.access_token' <<<"$BODY")
AUTH=(-H "Authorization: Bearer $TOKEN")

# Without a token, a packs endpoint answers 401 with the error body
# ("Missing Authentication - Status: 401").
post /api/v1/packs/dependencies "$(jq -cn --arg p "$PACK_SOURCE" '{pack_paths: [$p]}')"
expect_code 'no token' 401
check 'no token' '.status == 401 and (.error | type == "string") and (.message | type == "string")'

# ---------------------------------------------------------------------------
# Testing Quick Start, step 3: dependencies with {"pack_paths": []}: an empty list is
# a request with nothing to do, answered 200 with an empty analysis.
post /api/v1/packs/dependencies "$(jq -cn '{pack_paths: []}')" "${AUTH[@]}"
expect_code 'quick start (empty pack_paths)' 200
check 'quick start (empty pack_paths)' \
  '.data.analyzed_packs == [] and .data.dependencies == [] and .data.missing_dependencies == [] and .data.errors == []'

# ---------------------------------------------------------------------------
# Complete Workflow Example.

# 1. Download
post /api/v1/packs/download "$(jq -cn --arg src "$PACK_SOURCE" --arg dest "$DEST" \
  '{packs: [$src], destination_dir: $dest}')" "${AUTH[@]}"
expect_code download 200
check download '.data.total_count == 1 and .data.success_count == 1 and .data.failure_count == 0'
check download '.data.downloaded_packs[0].pack_path | type == "string" and length > 0'
check download '.data.downloaded_packs[0].pack_ref | type == "string" and length > 0'
PACK_PATH=$(jq -r '.data.downloaded_packs[0].pack_path' <<<"$BODY")
PACK_REF=$(jq -r '.data.downloaded_packs[0].pack_ref' <<<"$BODY")

# 2. Check dependencies
DEPS_REQUEST=$(jq -cn --arg p "$PACK_PATH" '{pack_paths: [$p]}')
post /api/v1/packs/dependencies "$DEPS_REQUEST" "${AUTH[@]}"
expect_code dependencies 200
check dependencies '.data.analyzed_packs[0].pack_path == $p' --arg p "$PACK_PATH"
check dependencies '.data.analyzed_packs[0].pack_ref == $ref' --arg ref "$PACK_REF"
check dependencies '.data.missing_dependencies | length == 0'

# 2b. The same call as server-sent events: progress events, then exactly one
# result event (and no error event) carrying the same {"data": ...} body.
post /api/v1/packs/dependencies "$DEPS_REQUEST" "${AUTH[@]}" -H 'Accept: text/event-stream'
expect_code 'dependencies (SSE)' 200
[[ $CTYPE == text/event-stream* ]] \
  || fail "dependencies (SSE): expected Content-Type text/event-stream, got '$CTYPE': $BODY"
SSE_EVENTS='
  gsub("\r"; "") | split("\n\n")
  | map(split("\n")
        | { event: (map(select(startswith("event:")) | sub("^event: ?"; "")) | first),
            data: (map(select(startswith("data:")) | sub("^data: ?"; "")) | join("\n")) })
  | map(select(.event != null))'
# sse_check EXPECTATION [jq options...] FILTER: FILTER holds for the event stream.
sse_check() {
  local expectation=$1
  shift
  jq -e -Rs "$@" >/dev/null 2>&1 <<<"$BODY" \
    || fail "dependencies (SSE): expected $expectation: $BODY"
}
sse_check 'at least one `event: progress`' \
  "$SSE_EVENTS"' | map(select(.event == "progress")) | length >= 1'
sse_check 'exactly one `event: result`' \
  "$SSE_EVENTS"' | map(select(.event == "result")) | length == 1'
sse_check 'no `event: error`' \
  "$SSE_EVENTS"' | map(select(.event == "error")) | length == 0'
sse_check 'progress data {stage: "analyze", pack, message, done, total, level}' \
  "$SSE_EVENTS"' | map(select(.event == "progress") | .data | fromjson)
  | all(.stage == "analyze" and (.pack | type == "string") and (.message | type == "string")
        and has("done") and has("total") and (.level | IN("info", "warning", "error")))'
sse_check 'result data {"data": <the dependencies result>}' --arg p "$PACK_PATH" \
  "$SSE_EVENTS"' | map(select(.event == "result"))[0].data | fromjson
  | .data.analyzed_packs[0].pack_path == $p and (.data.missing_dependencies | length == 0)'

# 3. Build/check environments
post /api/v1/packs/build-envs "$(jq -cn --arg p "$PACK_PATH" --arg base "$BASE" \
  '{pack_paths: [$p], packs_base_dir: $base}')" "${AUTH[@]}"
expect_code build-envs 200
check build-envs '.data.summary.success_count == 1'

# 4. Register
post /api/v1/packs/register-batch "$(jq -cn --arg p "$PACK_PATH" --arg base "$BASE" \
  '{pack_paths: [$p], packs_base_dir: $base, skip_tests: true}')" "${AUTH[@]}"
expect_code register-batch 200
check register-batch '.data.summary.success_count == 1 and .data.summary.failure_count == 0'
check register-batch '.data.registered_packs[0].pack_ref == $ref' --arg ref "$PACK_REF"
check register-batch '.data.registered_packs[0].storage_path == ($base + "/" + $ref)' \
  --arg base "$BASE" --arg ref "$PACK_REF"
check register-batch '.data.registered_packs[0].pack_id | type == "number"'
check register-batch '.data.registered_packs[0].components_registered
  | [.actions, .sensors, .triggers, .rules, .workflows, .policies] | all(type == "number")'
check register-batch '.data.summary.total_components | type == "number"'

# 5. The four steps in one call (Install): the pack is registered with this content
#    already, so the plan keeps it and nothing changes.
post /api/v1/packs/install "$(jq -cn --arg src "$PACK_SOURCE" --arg base "$BASE" \
  '{packs: [$src], packs_base_dir: $base}')" "${AUTH[@]}"
expect_code install 200
check install '.data.success and (.data.errors | length == 0)'
check install '.data.plan[0].pack_ref == $ref and .data.plan[0].action == "keep"' --arg ref "$PACK_REF"
check install '.data.lock.packs[0].pack_ref == $ref and (.data.lock.packs[0].checksum | startswith("sha256:"))' \
  --arg ref "$PACK_REF"

echo OK
