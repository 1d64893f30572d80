#!/bin/sh
# Leave a grandchild behind that keeps stdout and stderr open, then exit 0.
/bin/sleep 1000 &
echo "grandchild $!"
exit 0
