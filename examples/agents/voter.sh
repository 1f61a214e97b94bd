#!/bin/sh
# A voter for examples/decide.yaml: counts the lines of a file, honestly or not, as its pool
# tells it, so that the example's votes have agreement, dissent and a liar without a network.
#   voter.sh honest FILE          the count
#   voter.sh sloppy AGENT FILE    a count one or two too many, by agent
#   voter.sh liar FILE            a count a thousand too many
#   voter.sh sure FILE            {"vote": the count, "confidence": 0.95}
#   voter.sh unsure AGENT FILE    {"vote": a wrong count, "confidence": 0.6}
set -eu
lines() { wc -l < "$1" | tr -d ' '; }
mode=$1
shift
case $mode in
  honest) lines "$1" ;;
  sloppy) echo $(( $(lines "$2") + 1 + $1 % 2 )) ;;
  liar) echo $(( $(lines "$1") + 1000 )) ;;
  sure) printf '{"vote": "%s", "confidence": 0.95}\n' "$(lines "$1")" ;;
  unsure) printf '{"vote": "%s", "confidence": 0.6}\n' $(( $(lines "$2") + 1 + $1 % 7 )) ;;
  *) echo "voter.sh: unknown mode $mode" >&2; exit 2 ;;
esac
