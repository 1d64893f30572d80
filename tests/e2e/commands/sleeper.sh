#!/bin/sh
# Say ready, then sleep in the foreground (SIGTERM ends it).
echo "ready $$"
exec /bin/sleep "${1:-1000}"
