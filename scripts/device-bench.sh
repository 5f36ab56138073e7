#!/usr/bin/env bash
# The GPU benchmark, prepared to run in a few minutes on a Linux machine with
# a GPU and no network (`make bench-gpu` runs it here on lavapipe). It runs a
# prebuilt, stripped `phi-web` (glibc-linked; `make device-bench-binary`
# makes target/device-bench/phi-web) as `phi-web bench-gpu`, which writes
# bench-gpu.json and bench-gpu.md: the read ceiling, the matvec tuning sweep,
# decode attention and a synthetic Phi-3-mini generated on the spot.
#
# Such a machine may lack the Vulkan loader: give it unpacked loader
# libraries (--vulkan-libs DIR, the folder holding libvulkan.so.1) or the
# .deb files to unpack (--vulkan-debs DIR, e.g. from `apt-get download
# libvulkan1`), and the driver's ICD file (--icd FILE; NVIDIA's usual places
# are tried when it is not given).
#
#   scripts/device-bench.sh [--bin PATH] [--out DIR] [--profile auto|quick|full]
#       [--vulkan-libs DIR] [--vulkan-debs DIR] [--icd FILE]
#       [--nominal-gbps N] [--kernels-only] [--limit SECONDS]
set -euo pipefail
cd "$(dirname "$0")/.."

bin=target/device-bench/phi-web
out=target/bench-gpu
profile=auto
vulkan_libs=""
vulkan_debs=""
icd=""
nominal=""
kernels_only=""
limit=470  # seconds: the whole run stays under 8 minutes

die() { echo "device-bench: $*" >&2; exit 1; }
while [ $# -gt 0 ]; do
  case "$1" in
    --bin) bin="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    --profile) profile="$2"; shift 2 ;;
    --vulkan-libs) vulkan_libs="$2"; shift 2 ;;
    --vulkan-debs) vulkan_debs="$2"; shift 2 ;;
    --icd) icd="$2"; shift 2 ;;
    --nominal-gbps) nominal="$2"; shift 2 ;;
    --kernels-only) kernels_only=1; shift ;;
    --limit) limit="$2"; shift 2 ;;
    -h|--help) sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument $1 (--help lists them)" ;;
  esac
done

[ -x "$bin" ] || die "$bin is missing or not executable: run \`make device-bench-binary\` (or pass --bin)"
mkdir -p "$out"
log="$out/device-bench.log"
exec > >(tee "$log") 2>&1

if [ -n "$vulkan_debs" ]; then
  command -v dpkg >/dev/null || die "--vulkan-debs needs dpkg; unpack them elsewhere and pass --vulkan-libs"
  unpacked=$(mktemp -d)
  for deb in "$vulkan_debs"/*.deb; do dpkg -x "$deb" "$unpacked"; done
  vulkan_libs="$unpacked/usr/lib/x86_64-linux-gnu"
fi
if [ -n "$vulkan_libs" ]; then
  [ -e "$vulkan_libs/libvulkan.so.1" ] || die "$vulkan_libs has no libvulkan.so.1"
  export LD_LIBRARY_PATH="$vulkan_libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
elif ! ldconfig -p 2>/dev/null | grep -q 'libvulkan\.so\.1'; then
  die "no Vulkan loader (libvulkan.so.1) on this machine: pass --vulkan-libs DIR or --vulkan-debs DIR"
fi
if [ -z "$icd" ] && [ -z "${VK_DRIVER_FILES:-}${VK_ICD_FILENAMES:-}" ]; then
  for candidate in /usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json \
                   /usr/share/vulkan/icd.d/nvidia_icd.json /etc/vulkan/icd.d/nvidia_icd.json; do
    if [ -e "$candidate" ]; then icd="$candidate"; break; fi
  done
fi
if [ -n "$icd" ]; then
  [ -e "$icd" ] || die "no ICD file at $icd"
  export VK_DRIVER_FILES="$icd" VK_ICD_FILENAMES="$icd"
fi
export NODEVICE_SELECT=1

echo "== device-bench $(date -u +%FT%TZ) on $(uname -srm), $(ldd --version 2>/dev/null | head -1)"
if command -v nvidia-smi >/dev/null; then
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.mem --format=csv,noheader || true
  gpu_name=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1 || true)
  # Datasheet bandwidths (GB/s) for the decode goal, unless given.
  case "$gpu_name" in
    *H200*) nominal=${nominal:-4800} ;;
    *H100*HBM3*|*H100*SXM*) nominal=${nominal:-3350} ;;
  esac
fi
echo "== adapter (ICD: ${VK_DRIVER_FILES:-default})"
timeout 60 "$bin" info || die "no usable GPU adapter (see above): check the loader and ICD"

args=(bench-gpu --out "$out" --profile "$profile")
[ -n "$nominal" ] && args+=(--nominal-gbps "$nominal")
[ -n "$kernels_only" ] && args+=(--kernels-only)
echo "== phi-web ${args[*]} (limit ${limit} s)"
start=$(date +%s)
status=0
timeout "$limit" "$bin" "${args[@]}" >/dev/null || status=$?
echo "== finished in $(( $(date +%s) - start )) s, status $status"
[ -e "$out/bench-gpu.md" ] && cat "$out/bench-gpu.md"
[ "$status" -eq 0 ] || die "bench-gpu failed or ran past ${limit} s (status $status); the log is $log"
