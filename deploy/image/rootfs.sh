#!/bin/sh
# Assembles the image's root filesystem: rootfs.sh OUT BINARY
#
# OUT gets the binary as /usr/local/bin/threadline, the shared libraries it loads (glibc,
# libgcc_s) and their loader, as `ldd` names them, the CA certificates (async-nats trusts the
# system's roots for TLS), and /etc/passwd and /etc/group with the unprivileged user the image
# runs as (uid and gid 65532, "nonroot"). Nothing else: no shell, no package manager.
#
# deploy/Dockerfile runs it in its build stage; `scripts/image --local` runs it on the build
# machine, so that both images hold the same files.
set -eu
if [ "$#" -ne 2 ]; then
    echo "usage: rootfs.sh OUT BINARY" >&2
    exit 2
fi
out=$1
binary=$2
certs=/etc/ssl/certs/ca-certificates.crt
[ -x "$binary" ] || { echo "rootfs.sh: $binary is not an executable" >&2; exit 1; }
[ -f "$certs" ] || { echo "rootfs.sh: $certs is missing (install ca-certificates)" >&2; exit 1; }

mkdir -p "$out/usr/local/bin" "$out/etc/ssl/certs"
cp "$binary" "$out/usr/local/bin/threadline"
chmod 0755 "$out/usr/local/bin/threadline"
# `ldd` prints "name => /path (address)" for a library and "/path (address)" for the loader.
ldd "$binary" | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }' |
    while read -r library; do
        mkdir -p "$out$(dirname "$library")"
        cp -L "$library" "$out$library"
    done
cp -L "$certs" "$out$certs"
printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/nonexistent:/sbin/nologin\n' \
    >"$out/etc/passwd"
printf 'root:x:0:\nnonroot:x:65532:\n' >"$out/etc/group"
