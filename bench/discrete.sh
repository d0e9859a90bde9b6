# bench/discrete.sh: `bench/run --discrete`, sourced by bench/run once the
# sandbox is up (its helpers field/div/delta/watch_args and its variables
# BIN, DIR, SECS, CLIENTS, PROFILE, PROXY_ARGS, RAWSIGN are in scope).
#
# meterd at the pace of a discrete TPM: `meterbench tpm-proxy` listens on a
# port pair of its own and forwards to swtpm, holding each response until
# the command has taken as long as the emulated chip takes (latencies and
# their sources: bench/src/profile.rs). Everything else is the same sandbox.
# Figures: raw signs/s through the proxy (the chip's ceiling for meterd),
# start to READY, postmarks/s and p50/p99 at CLIENTS and at one client, TPM
# signs and NV increments a postmark (the proxy's counters, read with
# SIGUSR1 just before and just after each window), NV writes per 1,000
# sales (inotify on swtpm's state file) and the chip's busy fraction
# (swtpm's time + the time held, over the window).

if [ -z "$SECS_SET" ]; then
    if [ -n "$QUICK" ]; then SECS=5; else SECS=10; fi
fi
tests/sandbox stop-meterd "$DIR"
up_port=$(<"$DIR/swtpm.port")
chip_line=$("$BIN/meterbench" profile "$PROFILE" "${PROXY_ARGS[@]}")
log "discrete TPM: $chip_line"

# A free port pair of our own (the sandbox picks swtpm's the same way).
PPORT=
for _ in 1 2 3 4 5 6 7 8; do
    port=$((20000 + (RANDOM % 20000) * 2))
    rm -f "$DIR/proxy.ready"
    "$BIN/meterbench" tpm-proxy --listen "$port" --upstream "$up_port" --profile "$PROFILE" \
        "${PROXY_ARGS[@]}" --ready-file "$DIR/proxy.ready" >"$DIR/proxy.out" 2>>"$DIR/proxy.log" &
    PROXY_PID=$!
    for _ in $(seq 200); do
        if [ -f "$DIR/proxy.ready" ] || ! kill -0 "$PROXY_PID" 2>/dev/null; then break; fi
        sleep 0.02
    done
    if [ -f "$DIR/proxy.ready" ]; then
        PPORT=$port
        break
    fi
    wait "$PROXY_PID" 2>/dev/null || true
    PROXY_PID=
done
[ -n "$PPORT" ] || { cat "$DIR/proxy.log" >&2; log "the TPM proxy did not start"; exit 1; }
PTCTI="swtpm:host=127.0.0.1,port=$PPORT"

# proxy_snap: the proxy's counters now (SIGUSR1 makes it print one line).
proxy_snap() {
    local n i
    n=$(wc -l <"$DIR/proxy.out")
    kill -USR1 "$PROXY_PID"
    for i in $(seq 500); do
        [ "$(wc -l <"$DIR/proxy.out")" -gt "$n" ] && break
        sleep 0.01
    done
    tail -n 1 "$DIR/proxy.out"
}
# pd KEY BEFORE AFTER: how much a proxy counter grew.
pd() { delta "$(field "$1" "$2")" "$(field "$1" "$3")"; }

d_raw=n/a d_raw_nv=n/a
if [ -n "$RAWSIGN" ]; then
    log "raw ESAPI signs through the proxy for ${SECS}s (then NV increments for ${SECS}s)"
    raw_out=$("$RAWSIGN" --tcti "$PTCTI" --seconds "$SECS")
    d_raw=$(sed -n 's/^raw_signs_per_sec=//p' <<<"$raw_out")
    d_raw_nv=$(sed -n 's/^raw_nv_increments_per_sec=//p' <<<"$raw_out")
fi

log "meterd start to READY=1 through the proxy"
d_ready_line=$(METERD_TCTI=$PTCTI "$BIN/meterbench" ready --timeout 120 --log "$DIR/ready-discrete.log" -- "$BIN/meterd")
log "$d_ready_line"

SANDBOX_METERD_TCTI=$PTCTI tests/sandbox start-meterd "$DIR"

# d_window N [S]: one postmark load of N clients through the proxy for S
# seconds (default SECS); sets D_LINE (the generator's line) and D_A/D_B
# (the proxy's counters around it).
d_window() {
    local watch secs=${2:-$SECS}
    mapfile -t watch < <(watch_args)
    log "postmarks through the proxy, $1 client(s), ${secs}s"
    D_A=$(proxy_snap)
    D_LINE=$("$BIN/meterbench" postmark --clients "$1" --seconds "$secs" "${watch[@]}")
    D_B=$(proxy_snap)
    log "$D_LINE"
    log "proxy after: $D_B"
}
d_window "$CLIENTS"
dn_line=$D_LINE dn_a=$D_A dn_b=$D_B
# One client: long enough for 1,000 calls (a full run), so that its p99 is
# a percentile and not the slowest call or two. At a chip's pace a lone
# client makes ~17 calls a second; 10 s would give ~170, and the one NV
# increment in them (6 per 1,000 sales, +25 ms each) would be its "p99".
SECS1=$SECS
if [ -z "$QUICK" ] && [ -z "$SECS_SET" ]; then
    SECS1=$(awk -v r="$d_raw" -v s="$SECS" 'BEGIN { if (r + 0 > 0) { n = int(1000 / r) + 1; print (n > s ? n : s) } else print s }')
fi
d_window 1 "$SECS1"
d1_line=$D_LINE d1_a=$D_A d1_b=$D_B

# The chip's busy time: swtpm's own time + the time the proxy held replies.
chip_busy() {
    local ms
    ms=$(awk -v u="$(pd upstream_ms "$2" "$3")" -v h="$(pd held_ms "$2" "$3")" 'BEGIN { if (u ~ /^[0-9.]+$/ && h ~ /^[0-9.]+$/) print u + h; else print "n/a" }')
    div "$ms" "$(field seconds "$1")" '%.1f' 0.1
}
per_sale() { div "$(pd "$1" "$3" "$4")" "$(field ok "$2")" "$5" "${6:-1}"; }
d_pm=$(field postmarks_per_sec "$dn_line")
d_raw_ms=$(div 1000 "$d_raw" '%.1f')

printf '\nmeterd on a discrete TPM (emulated; %s s per figure, %s clients, %s cores)\n' "$SECS" "$CLIENTS" "$(nproc)"
printf '%s\n' "$chip_line"
printf 'sources: bench/src/profile.rs (published sign times: wolfTPM examples/bench results; NV write time and P-384 factor: assumptions)\n'
printf '%-46s %12s %12s %12s\n' "figure" "$CLIENTS clients" "1 client" "target"
printf '%-46s %12s\n' "raw ESAPI sign through the proxy, per second" "$d_raw"
printf '%-46s %12s\n' "raw NV increment through the proxy, per second" "$d_raw_nv"
printf '%-46s %12s\n' "start to READY=1 through the proxy, ms" "$(field start_to_ready_ms "$d_ready_line")"
printf '%-46s %12s %12s\n' "postmarks/s" "$d_pm" "$(field postmarks_per_sec "$d1_line")"
printf '%-46s %12s %12s %12s\n' "  ratio postmarks/s / raw sign" "$(div "$d_pm" "$d_raw" '%.2f')" "" ">= 0.9"
printf '%-46s %12s %12s\n' "PostmarkDigest p50, ms" "$(field p50_ms "$dn_line")" "$(field p50_ms "$d1_line")"
printf '%-46s %12s %12s\n' "calls in the window (1 client: ${SECS1} s)" "$(field ok "$dn_line")" "$(field ok "$d1_line")"
printf '%-46s %12s %12s\n' "PostmarkDigest p99, ms" "$(field p99_ms "$dn_line")" "$(field p99_ms "$d1_line")"
printf '%-46s %12s %12s %12s\n' "  ratio 1-client p99 / one raw sign ($d_raw_ms ms)" "" "$(div "$(field p99_ms "$d1_line")" "$d_raw_ms" '%.2f')" "<= 1.5"
printf '%-46s %12s %12s %12s\n' "chip busy (swtpm + held time / wall), %" "$(chip_busy "$dn_line" "$dn_a" "$dn_b")" "$(chip_busy "$d1_line" "$d1_a" "$d1_b")" ">= 95 ($CLIENTS)"
printf '%-46s %12s %12s\n' "TPM2_Sign per postmark (proxy)" "$(per_sale sign "$dn_line" "$dn_a" "$dn_b" '%.2f')" "$(per_sale sign "$d1_line" "$d1_a" "$d1_b" '%.2f')"
printf '%-46s %12s %12s\n' "TPM commands per postmark (proxy)" "$(per_sale commands "$dn_line" "$dn_a" "$dn_b" '%.2f')" "$(per_sale commands "$d1_line" "$d1_a" "$d1_b" '%.2f')"
printf '%-46s %12s %12s %12s\n' "NV increments per 1,000 sales (proxy)" "$(per_sale nv_increment "$dn_line" "$dn_a" "$dn_b" '%.1f' 1000)" "$(per_sale nv_increment "$d1_line" "$d1_a" "$d1_b" '%.1f' 1000)" "<= 10"
printf '%-46s %12s %12s %12s\n' "NV-writing commands per 1,000 sales (proxy)" "$(per_sale class_nv_write "$dn_line" "$dn_a" "$dn_b" '%.1f' 1000)" "$(per_sale class_nv_write "$d1_line" "$d1_a" "$d1_b" '%.1f' 1000)" "<= 10"
printf '%-46s %12s %12s %12s\n' "NV writes per 1,000 sales (swtpm state file)" "$(div "$(field nv_writes "$dn_line")" "$(field ok "$dn_line")" '%.1f' 1000)" "$(div "$(field nv_writes "$d1_line")" "$(field ok "$d1_line")" '%.1f' 1000)" "<= 10"
printf '%-46s %12s %12s\n' "meterd CPU per postmark, ms" "$(div "$(field cpu_meterd_ms "$dn_line")" "$(field ok "$dn_line")" '%.3f')" "$(div "$(field cpu_meterd_ms "$d1_line")" "$(field ok "$d1_line")" '%.3f')"
printf '%-46s %12s\n' "load average at the end (2 cores shared)" "$(cut -d' ' -f1-3 /proc/loadavg)"
