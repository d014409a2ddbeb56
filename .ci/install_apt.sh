#!/usr/bin/env bash
# Install the Debian packages the tests need: slurm-wlm and munge (the local-SLURM test) and a Java
# runtime (pycocoevalcap's caption tokenizer, for CIDEr and BLEU-4).
# Idempotent: does nothing when the daemons, the client and java are already on PATH,
# so CI images that pre-install them (or a second run) skip apt entirely.
set -euo pipefail

if command -v slurmctld >/dev/null && command -v sbatch >/dev/null && command -v munged >/dev/null \
        && command -v java >/dev/null; then
    echo "install_apt: slurm-wlm, munge and java already installed"
    exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
    echo "install_apt: must run as root to apt-get install slurm-wlm munge" >&2
    exit 1
fi

export DEBIAN_FRONTEND=noninteractive
# One index refresh, then install; --no-install-recommends keeps the image small
# (the recommends pull in slurmdbd/mysql docs we do not use).
apt-get update
packages="slurm-wlm munge"
command -v java >/dev/null || packages="$packages default-jre-headless"
apt-get install -y --no-install-recommends $packages
echo "install_apt: installed $(dpkg-query -W -f='${Package} ${Version} ' $packages)"
