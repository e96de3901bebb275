#!/usr/bin/env bash
# Debian packages that the optional parts need: Vulkan/OpenMP for Real-ESRGAN, Chromium for the UI
# tests. Installs what is missing when run as root with apt; otherwise says what to install.
set -uo pipefail
wanted=(libvulkan1 libomp5 libgl1 libglib2.0-0 chromium chromium-driver)
missing=()
for package in "${wanted[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "installing Debian packages: ${missing[*]}"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
  echo "note: install these Debian packages (Real-ESRGAN candidates, browser tests): ${missing[*]}" >&2
fi
