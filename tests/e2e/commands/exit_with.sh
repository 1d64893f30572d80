#!/bin/sh
# exit_with.sh code N   -> exit status N
# exit_with.sh signal S -> die of signal S (a name such as SEGV)
echo "about to $1 $2"
case "$1" in
code) exit "$2" ;;
signal) kill -s "$2" $$; /bin/sleep 5 ;;
esac
