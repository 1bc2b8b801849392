#!/usr/bin/env bash
# Make a throw-away SoftHSM token for experiments: new-token.sh DIR [LABEL]
# The PIN is random and written to DIR/pin (mode 0600); nothing is printed of it.
set -euo pipefail
dir=${1:?usage: new-token.sh DIR [LABEL]}
label=${2:-custody-scratch}
"$(dirname "$0")/install.sh"
mkdir -p "$dir/tokens" && chmod 700 "$dir"
dir=$(cd "$dir" && pwd)
cat > "$dir/softhsm2.conf" <<CONF
directories.tokendir = $dir/tokens
objectstore.backend = file
log.level = ERROR
CONF
umask 077
head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$dir/pin"
head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$dir/so-pin"
SOFTHSM2_CONF="$dir/softhsm2.conf" softhsm2-util --init-token --free --label "$label" \
  --pin "$(cat "$dir/pin")" --so-pin "$(cat "$dir/so-pin")" >/dev/null
lib=/usr/lib/softhsm/libsofthsm2.so
echo "export SOFTHSM2_CONF=$dir/softhsm2.conf"
echo "uri: pkcs11:token=$label?module-path=$lib   pin_file: $dir/pin"
