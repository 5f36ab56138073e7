#!/usr/bin/env sh
# Gives wgpu a GPU adapter on machines without one: Mesa's lavapipe, a CPU
# Vulkan driver. Idempotent and quick when the driver is already installed.
set -eu

case "$(uname -s)" in
  Darwin) exit 0 ;;  # Metal is always there
esac

if ls /usr/share/vulkan/icd.d/lvp_icd*.json >/dev/null 2>&1 && ls /usr/lib/*/libvulkan.so.1 >/dev/null 2>&1; then
  exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
  echo "setup-native: no lavapipe found and no apt-get; install your distribution's Mesa Vulkan drivers (lavapipe) and the Vulkan loader" >&2
  exit 1
fi

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
echo "setup-native: installing mesa-vulkan-drivers libvulkan1 (lavapipe)"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq mesa-vulkan-drivers libvulkan1 >/dev/null
