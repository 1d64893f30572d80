#!/bin/sh
# Fails, with a diff, when docs/configuration.md is not what
# `taskstreamd --help-markdown` prints (the settings table in src/config.c
# changed and the page was not regenerated with `make docs`).
#
# Usage: check_config_docs.sh <path to taskstreamd> <repository root>
set -eu

if [ "$#" -ne 2 ]; then
    echo "usage: $0 <taskstreamd> <repo root>" >&2
    exit 2
fi
bin=$1
doc=$2/docs/configuration.md

if [ ! -f "$doc" ]; then
    echo "check_config_docs: $doc is missing; run: make docs" >&2
    exit 1
fi

out=$(mktemp)
trap 'rm -f "$out"' EXIT HUP INT TERM

if ! "$bin" --help-markdown >"$out"; then
    echo "check_config_docs: $bin --help-markdown failed" >&2
    exit 1
fi

if ! diff -u "$doc" "$out"; then
    echo "check_config_docs: docs/configuration.md is out of date; run: make docs" >&2
    exit 1
fi
