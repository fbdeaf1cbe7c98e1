#!/usr/bin/env bash
# failures.sh LOG: print, from a `go test -v` log of tests that ran in
# parallel, every line of each failed top-level test (its subtests and the
# continuation lines of multi-line logs included), test by test. `make test`
# shows only one line per log call while the suite runs; this is what it
# prints at the end when a test failed, so that the reason is in the tail of
# the output.
set -euo pipefail
log=${1:?usage: failures.sh LOG}
awk '
	# go test -v names the test whose output follows on "=== RUN/CONT/NAME/PAUSE";
	# "--- FAIL/PASS/SKIP: X" lines and the indented lines after them belong to X.
	/^=== (RUN|CONT|NAME|PAUSE) / {
		cur = $3; sub(/\/.*/, "", cur)
		if ($2 == "RUN") out[cur] = out[cur] $0 "\n"
		next
	}
	/^ *--- (FAIL|PASS|SKIP): / {
		name = $3; sub(/\/.*/, "", name); cur = name
		if ($2 == "FAIL:" && $0 ~ /^---/) { failed[name] = 1; if (!(name in seen)) { seen[name] = 1; order[n++] = name } }
	}
	cur != "" { out[cur] = out[cur] $0 "\n" }
	END {
		for (i = 0; i < n; i++) {
			printf "\n======== output of failed test %s ========\n%s", order[i], out[order[i]]
		}
	}
' "$log"
