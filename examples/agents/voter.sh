#!/bin/sh
# A voter for examples/decide.yaml: counts the lines of a file, honestly or not, as its pool
# tells it, so that the example's votes have agreement, dissent and a liar without a network.
#   voter.sh honest FILE          the count
#   voter.sh sloppy AGENT FILE    a count one or two too many, by agent
#   voter.sh liar FILE            a count a thousand too many
#   voter.sh sure FILE            {"vote": the count, "confidence": 0.95}
#   voter.sh unsure AGENT FILE    {"vote": a wrong count, "confidence": 0.6}
#   voter.sh leader AGENT FILE    a proposed count (seven too many for one agent in three),
#                                 or, asked to review one (a "review" field in the JSON on
#                                 stdin), approve when it is the count and reject when not
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
  leader)
    payload=$(cat)
    count=$(lines "$2")
    case $payload in
      *'"review":'*)
        proposal=$(printf '%s' "$payload" | sed -n 's/.*"review":{"proposal":"\([^"]*\)"}.*/\1/p')
        if [ "$proposal" = "$count" ]; then echo approve; else echo reject; fi ;;
      *)
        if [ $(( $1 % 3 )) -eq 2 ]; then echo $(( count + 7 )); else echo "$count"; fi ;;
    esac ;;
  *) echo "voter.sh: unknown mode $mode" >&2; exit 2 ;;
esac
