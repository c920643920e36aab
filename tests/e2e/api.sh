# Sourced by suite.sh: the Firecracker-compatible API (issue 13), driven as
# orchestrators drive Firecracker, with VSOCK_PROBE's `http` as the client.
#  api-kata-config   Kata's Go flow: a config file shaped as Kata writes it
#                    (rootfs read-only, eight empty placeholder drives, a tap,
#                    vsock with vsock_id, logger and metrics FIFOs, smt off,
#                    empty rate limiters), GET / until Running, FlushMetrics,
#                    then PATCH /drives/drive_0 to a new image the guest reads.
#  api-put-sequence  runtime-rs / firecracker-go-sdk: logger, metrics,
#                    machine-config, boot-source, drives, network-interfaces,
#                    vsock, InstanceStart; then SendCtrlAltDel: kiln exits 0.
#  api-rate-limit    a drive limited to 512 KiB/s: the guest's own measure of
#                    its read throughput is within 10% of the limit.
#  api-distro-kernel a distribution's kernel (DISTRO_KERNEL, DISTRO_INITRD:
#                    modular virtio, ACPI discovery) from a config file: an
#                    empty drive patched to an image it reads, then
#                    SendCtrlAltDel through its own i8042 and atkbd drivers.
# The guest is otherwise the default one (KERNEL, INITRD) running a
# kiln.cmd script.
API_SCENARIOS="api-kata-config api-put-sequence api-rate-limit api-distro-kernel"

# api_guest_cmd SCRIPT: the kiln.cmd= argument that runs SCRIPT in the guest.
api_guest_cmd() { printf 'kiln.cmd=%s' "$(printf '%s' "$1" | base64 | tr -d '\n')"; }
# api SOCK METHOD PATH [BODY]: prints "STATUS BODY".
api() { "$VSOCK_PROBE" http "$@" 2>&1; }
# api_status SOCK METHOD PATH [BODY]: just the status.
api_status() { api "$@" | cut -d' ' -f1; }
# api_wait_state SOCK STATE SECS: polls GET / (Kata's runtime does) until
# the instance is in STATE.
api_wait_state() {
  i=0
  while [ "$i" -lt "$(($3 * 10))" ]; do
    api "$1" GET / | grep -q "\"state\":\"$2\"" && return 0
    kill -0 "$kpid" 2>/dev/null || return 1
    sleep 0.1; i=$((i + 1))
  done
  return 1
}
# api_start NAME SOCK ARGS...: kiln as Firecracker in the background
# (console to $OUT/NAME.log); waits for its socket.
api_start() {
  name=$1 sock=$2; shift 2
  rm -f "$sock"
  timeout -s KILL "$GUEST_TIMEOUT" "$KILN" --api-sock "$sock" "$@" </dev/null >"$OUT/$name.log" 2>"$OUT/$name.err" &
  kpid=$!
  i=0
  while [ ! -S "$sock" ] && [ "$i" -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
}
# api_end SECS: waits for kiln to exit; sets $status (124 if it did not).
api_end() {
  i=0
  while kill -0 "$kpid" 2>/dev/null && [ "$i" -lt "$(($1 * 10))" ]; do sleep 0.1; i=$((i + 1)); done
  if kill -0 "$kpid" 2>/dev/null; then kill -KILL "$kpid" 2>/dev/null; wait "$kpid" 2>/dev/null; status=124
  else wait "$kpid"; status=$?; fi
}

if wanted api-kata-config; then
  n=api-kata-config
  d=$SCRATCH/api-kata; rm -rf "$d"; mkdir -p "$d"
  sock=$d/firecracker.socket
  for i in 0 1 2 3 4 5 6 7; do : >"$d/drive_$i"; done
  { printf 'KILN-PATCHED-7c1'; head -c 4080 /dev/zero; } >"$d/new.img"
  mkfifo "$d/logs.fifo" "$d/metrics.fifo"
  cat "$d/logs.fifo" >"$d/logs.txt" &
  lpid=$!
  cat "$d/metrics.fifo" >"$d/metrics.txt" &
  mpid=$!
  # drive_0 is the guest's second disk (/dev/vdb), after the rootfs. With
  # acpi=off (Kata's) the guest cannot power off: it ends with a reboot.
  script='i=0; while [ $i -lt 1500 ]; do m=$(head -c 16 /dev/vdb 2>/dev/null); if [ "$m" = KILN-PATCHED-7c1 ]; then echo "KILN-DRIVE0 $m"; exit 0; fi; [ $i = 0 ] && echo KILN-WAITING-FOR-DRIVE0; sleep 0.2; i=$((i+1)); done; echo KILN-DRIVE0 never; exit 1'
  drives="{\"drive_id\":\"rootfs\",\"path_on_host\":\"$ROOTFS\",\"is_root_device\":false,\"is_read_only\":true}"
  for i in 0 1 2 3 4 5 6 7; do
    drives="$drives,{\"drive_id\":\"drive_$i\",\"path_on_host\":\"$d/drive_$i\",\"is_root_device\":false,\"is_read_only\":false}"
  done
  cat >"$d/fcConfig.json" <<EOF
{
	"boot-source": {
		"kernel_image_path": "$KERNEL",
		"initrd_path": "$INITRD",
		"boot_args": "console=ttyS0 pci=off reboot=k panic=1 iommu=off net.ifnames=0 random.trust_cpu=on acpi=off quiet kiln.halt=reboot $(api_guest_cmd "$script")"
	},
	"drives": [$drives],
	"logger": {
		"level": "Debug",
		"log_path": "$d/logs.fifo"
	},
	"machine-config": {
		"mem_size_mib": 256,
		"smt": false,
		"vcpu_count": 1
	},
	"metrics": {
		"metrics_path": "$d/metrics.fifo"
	},
	"network-interfaces": [
		{
			"guest_mac": "02:fc:00:00:00:05",
			"host_dev_name": "tapkata0",
			"iface_id": "eth0",
			"rx_rate_limiter": {},
			"tx_rate_limiter": {}
		}
	],
	"vsock": {
		"guest_cid": 3,
		"uds_path": "$d/kata.hvsock",
		"vsock_id": "root"
	}
}
EOF
  start=$(now)
  api_start $n "$sock" --config-file "$d/fcConfig.json"
  running=no; flushed=-; patched=-
  if api_wait_state "$sock" Running 60; then
    running=yes
    flushed=$(api_status "$sock" PUT /actions '{"action_type":"FlushMetrics"}')
    wait_for $n KILN-WAITING-FOR-DRIVE0 "$GUEST_TIMEOUT"
    patched=$(api "$sock" PATCH /drives/drive_0 "{\"drive_id\":\"drive_0\",\"path_on_host\":\"$d/new.img\"}")
  fi
  api_end "$GUEST_TIMEOUT"
  echo "E2E-TIME $n - $(elapsed "$start" "$(now)")"
  kill "$lpid" "$mpid" 2>/dev/null
  if [ "$running" != yes ]; then fail $n "GET / never said Running: $(api "$sock" GET /) $(head -c 300 "$OUT/$n.err")"
  elif [ "$flushed" != 204 ]; then fail $n "FlushMetrics gave $flushed"
  elif [ "${patched%% *}" != 204 ]; then fail $n "PATCH /drives/drive_0 gave $patched"
  elif ! grep -q 'KILN-DRIVE0 KILN-PATCHED-7c1' "$OUT/$n.log"; then fail $n "the guest did not read the new medium: $(grep KILN- "$OUT/$n.log" | tail -n 3 | tr '\n' ' ')"
  elif [ "$status" != 0 ]; then fail $n "status=$status: $(head -c 300 "$OUT/$n.err")"
  elif ! grep -q '"utc_timestamp_ms"' "$d/metrics.txt"; then fail $n "no metrics line in the FIFO"
  elif [ ! -s "$d/logs.txt" ]; then fail $n "nothing in the log FIFO"
  else pass $n "Kata's config file booted, Running by GET /, metrics and log FIFOs written, drive_0 patched and read by the guest"; fi
fi

if wanted api-put-sequence; then
  n=api-put-sequence
  d=$SCRATCH/api-put; rm -rf "$d"; mkdir -p "$d"
  sock=$d/api.sock
  script='echo KILN-WAITING-FOR-CAD; exec sleep 1000'
  : >"$d/log.txt"; : >"$d/metrics.json"
  api_start $n "$sock" --boot-timer
  start=$(now)
  steps=
  step() { s=$(api_status "$sock" "$@"); steps="$steps $2=$s"; [ "$s" = 204 ]; }
  step PUT /logger "{\"log_path\":\"$d/log.txt\",\"level\":\"Info\"}" &&
  step PUT /metrics "{\"metrics_path\":\"$d/metrics.json\"}" &&
  step PUT /machine-config '{"vcpu_count":2,"mem_size_mib":256,"smt":false}' &&
  step PUT /boot-source "{\"kernel_image_path\":\"$KERNEL\",\"initrd_path\":\"$INITRD\",\"boot_args\":\"$BASE $(api_guest_cmd "$script")\"}" &&
  step PUT /drives/rootfs "{\"drive_id\":\"rootfs\",\"path_on_host\":\"$ROOTFS\",\"is_root_device\":false,\"is_read_only\":true}" &&
  step PUT /network-interfaces/eth0 '{"iface_id":"eth0","host_dev_name":"tapput0","guest_mac":"02:fc:00:00:00:06"}' &&
  step PUT /vsock "{\"guest_cid\":3,\"uds_path\":\"$d/v.sock\"}" &&
  t_start=$(now) &&
  step PUT /actions '{"action_type":"InstanceStart"}'
  ok=$?
  # InstanceStart to the guest's boot-timer write (kiln's --boot-timer line).
  to_user=-
  i=0
  while [ "$ok" = 0 ] && [ "$i" -lt 600 ]; do
    if grep -q 'user space reached' "$OUT/$n.err"; then to_user=$(elapsed "$t_start" "$(now)"); break; fi
    sleep 0.1; i=$((i + 1))
  done
  cad=-
  if [ "$ok" = 0 ] && wait_for $n KILN-WAITING-FOR-CAD "$GUEST_TIMEOUT"; then
    cad=$(api_status "$sock" PUT /actions '{"action_type":"SendCtrlAltDel"}')
  fi
  api_end 120
  echo "E2E-TIME $n - $(elapsed "$start" "$(now)")"
  if [ "$ok" != 0 ]; then fail $n "a request was refused:$steps $(head -c 300 "$OUT/$n.err")"
  elif [ "$cad" != 204 ]; then fail $n "SendCtrlAltDel gave $cad (steps:$steps)"
  elif [ "$status" != 0 ]; then fail $n "kiln did not exit 0 after SendCtrlAltDel: status=$status $(tail -n 2 "$OUT/$n.log" | tr '\n' ' ')"
  elif [ -e "$sock" ]; then fail $n "the API socket was left behind"
  else pass $n "PUT sequence accepted, InstanceStart to user space ${to_user}s (nested), the guest rebooted on SendCtrlAltDel and kiln exited 0"; fi
fi

if wanted api-rate-limit; then
  n=api-rate-limit
  d=$SCRATCH/api-rate; rm -rf "$d"; mkdir -p "$d"
  sock=$d/api.sock
  head -c 4194304 /dev/zero >"$d/data.img"
  # The bucket starts full (512 KiB): read that first, then time 2 MiB.
  script='dd if=/dev/vda of=/dev/null bs=64k count=8 iflag=direct 2>/dev/null; a=$(cut -d" " -f1 /proc/uptime); dd if=/dev/vda of=/dev/null bs=64k skip=8 count=32 iflag=direct 2>/dev/null; b=$(cut -d" " -f1 /proc/uptime); echo "KILN-RATE $a $b"'
  api_start $n "$sock"
  start=$(now)
  api_status "$sock" PUT /machine-config '{"vcpu_count":1,"mem_size_mib":256}' >/dev/null
  api_status "$sock" PUT /boot-source "{\"kernel_image_path\":\"$KERNEL\",\"initrd_path\":\"$INITRD\",\"boot_args\":\"$BASE $(api_guest_cmd "$script")\"}" >/dev/null
  put=$(api "$sock" PUT /drives/data "{\"drive_id\":\"data\",\"path_on_host\":\"$d/data.img\",\"is_root_device\":false,\"is_read_only\":true,\"rate_limiter\":{\"bandwidth\":{\"size\":524288,\"refill_time\":1000}}}")
  started=$(api_status "$sock" PUT /actions '{"action_type":"InstanceStart"}')
  api_end "$GUEST_TIMEOUT"
  echo "E2E-TIME $n - $(elapsed "$start" "$(now)")"
  rate=$(sed -n 's/^KILN-RATE \([0-9.]*\) \([0-9.]*\).*/\1 \2/p' "$OUT/$n.log" | tr -d '\r' |
    awk '{ s = $2 - $1; if (s > 0) printf "%.0f", 2097152 / s }')
  if [ "${put%% *}" != 204 ] || [ "$started" != 204 ]; then fail $n "PUT /drives: $put, InstanceStart: $started"
  elif [ -z "$rate" ]; then fail $n "no KILN-RATE line (status=$status): $(grep KILN- "$OUT/$n.log" | tail -n 3 | tr '\n' ' ')"
  elif [ "$rate" -lt 471859 ] || [ "$rate" -gt 576716 ]; then fail $n "the guest read at $rate B/s; the limit is 524288 B/s (10% either way)"
  else pass $n "the guest read at $rate B/s under a 524288 B/s limit ($(awk -v r="$rate" 'BEGIN { printf "%.1f", (r / 524288 - 1) * 100 }')%)"; fi
fi

if wanted api-distro-kernel; then
  n=api-distro-kernel
  d=$SCRATCH/api-distro; rm -rf "$d"; mkdir -p "$d"
  sock=$d/api.sock
  : >"$d/empty.img"
  { printf 'KILN-PATCHED-d15'; head -c 4080 /dev/zero; } >"$d/new.img"
  script='i=0; while [ $i -lt 1500 ]; do m=$(head -c 16 /dev/vda 2>/dev/null); if [ "$m" = KILN-PATCHED-d15 ]; then echo "KILN-DRIVE $m"; break; fi; [ $i = 0 ] && echo KILN-WAITING-FOR-DRIVE; sleep 0.2; i=$((i+1)); done; echo KILN-WAITING-FOR-CAD; exec sleep 1000'
  cat >"$d/vm.json" <<EOF
{
  "boot-source": {"kernel_image_path": "$DISTRO_KERNEL", "initrd_path": "$DISTRO_INITRD",
                  "boot_args": "$BASE $(api_guest_cmd "$script")"},
  "machine-config": {"vcpu_count": 1, "mem_size_mib": 256, "smt": false},
  "drives": [{"drive_id": "data", "path_on_host": "$d/empty.img", "is_root_device": false, "is_read_only": false}]
}
EOF
  start=$(now)
  if [ ! -f "${DISTRO_KERNEL:-}" ] || [ ! -f "${DISTRO_INITRD:-}" ]; then
    fail $n "DISTRO_KERNEL/DISTRO_INITRD not given"
  else
    api_start $n "$sock" --config-file "$d/vm.json"
    patched=- cad=-
    if wait_for $n KILN-WAITING-FOR-DRIVE "$GUEST_TIMEOUT"; then
      patched=$(api_status "$sock" PATCH /drives/data "{\"drive_id\":\"data\",\"path_on_host\":\"$d/new.img\"}")
    fi
    if wait_for $n KILN-WAITING-FOR-CAD "$GUEST_TIMEOUT"; then
      cad=$(api_status "$sock" PUT /actions '{"action_type":"SendCtrlAltDel"}')
    fi
    api_end 120
    echo "E2E-TIME $n - $(elapsed "$start" "$(now)")"
    if ! grep -q KILN-GUEST-READY "$OUT/$n.log"; then fail $n "the kernel did not reach /init (status=$status): $(head -c 300 "$OUT/$n.err")"
    elif [ "$patched" != 204 ]; then fail $n "PATCH /drives/data gave $patched"
    elif ! grep -q 'KILN-DRIVE KILN-PATCHED-d15' "$OUT/$n.log"; then fail $n "the guest did not read the new medium: $(grep KILN- "$OUT/$n.log" | tail -n 3 | tr '\n' ' ')"
    elif [ "$cad" != 204 ]; then fail $n "SendCtrlAltDel gave $cad"
    elif [ "$status" != 0 ] || ! grep -q KILN-CTRL-ALT-DEL "$OUT/$n.log"; then fail $n "no reboot on Ctrl+Alt+Del (status=$status): $(tail -n 3 "$OUT/$n.log" | tr '\n' ' ')"
    else pass $n "Debian's kernel: the patched drive read, Ctrl+Alt+Del through its i8042 and atkbd rebooted it, kiln exited 0"; fi
  fi
fi
