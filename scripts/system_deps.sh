#!/usr/bin/env bash
# Install the Debian packages the project needs (datasets, fonts for the stand-ins,
# Chromium for the browser test). Runs apt only as root and only for what is missing.
set -eu
PKGS="dataset-fashion-mnist chromium
fonts-urw-base35 fonts-dejavu-core fonts-liberation fonts-kouzan-mouhitsu fonts-noto-core
fonts-dkg-handwriting fonts-breip fonts-humor-sans fonts-femkeklaver fonts-kaushanscript fonts-rufscript
fonts-bwht fonts-lobster fonts-leckerli-one fonts-joscelyn fonts-isabella fonts-blankenburg fonts-beteckna
fonts-goudybookletter fonts-dancingscript fonts-comic-neue fonts-cantarell fonts-ebgaramond fonts-oldstandard
fonts-crosextra-caladea fonts-aoyagi-soseki fonts-kiloji fonts-seto"
missing=""
for p in $PKGS; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
[ -z "$missing" ] && exit 0
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
  echo "warning: missing Debian packages:$missing" >&2
  echo "         install them with: sudo apt-get install -y$missing (the datasets/stand-ins that need them will say so)" >&2
  exit 0
fi
echo "installing:$missing"
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >/dev/null
