#!/bin/sh
# The shared library's ABI is exactly the header's: the TS_API functions of
# include/taskstream.h, the global names of src/libtaskstream.map and the
# dynamic symbols libtaskstream.so defines are one and the same set; the
# SONAME is libtaskstream.so.0 and libsystemd is not needed.
# Usage: check_abi.sh SOURCE_DIR LIBTASKSTREAM_SO
set -eu
src=$1
so=$2
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# Each declaration from TS_API to its ';' on one line; the name is the
# identifier just before the first '('.
awk '/^TS_API/ {decl = ""; on = 1} on {decl = decl " " $0} on && /;/ {print decl; on = 0}' \
    "$src/include/taskstream.h" |
    sed -n 's/^[^(]*[^A-Za-z0-9_]\([A-Za-z_][A-Za-z0-9_]*\)(.*/\1/p' | sort -u >"$tmp/header"
sed -n 's/^[[:space:]]*\(ts_[A-Za-z0-9_]*\);$/\1/p' "$src/src/libtaskstream.map" | sort -u >"$tmp/map"
nm -D --defined-only "$so" | awk '$2 ~ /^[TDBRVW]$/ {print $3}' | sed 's/@.*//' |
    grep -v '^TASKSTREAM_0$' | sort -u >"$tmp/so"

bad=0
[ -s "$tmp/header" ] || { echo "no TS_API declaration found in the header"; bad=1; }
if ! diff -u "$tmp/header" "$tmp/map" >"$tmp/d1"; then
    echo "header (-) and src/libtaskstream.map (+) differ:"; cat "$tmp/d1"; bad=1
fi
if ! diff -u "$tmp/header" "$tmp/so" >"$tmp/d2"; then
    echo "header (-) and the symbols $so exports (+) differ:"; cat "$tmp/d2"; bad=1
fi
soname=$(objdump -p "$so" | awk '$1 == "SONAME" {print $2}')
[ "$soname" = "libtaskstream.so.0" ] || { echo "SONAME is '$soname', not libtaskstream.so.0"; bad=1; }
if objdump -p "$so" | awk '$1 == "NEEDED" {print $2}' | grep -q '^libsystemd'; then
    echo "$so needs libsystemd (only the daemon may)"; bad=1
fi
# Every exported symbol carries the version node.
if nm -D --defined-only "$so" | awk '$2 ~ /^[TDBRW]$/' | grep -v '@@TASKSTREAM_0$' | grep .; then
    echo "symbols above are not in the TASKSTREAM_0 version node"; bad=1
fi
[ "$bad" -eq 0 ] && echo "abi: $(wc -l <"$tmp/header") symbols, SONAME $soname"
exit "$bad"
