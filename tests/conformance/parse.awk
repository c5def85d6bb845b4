# Parse the verbose (default) text output of libiscsi's iscsi-test-cu into
# one line per test: "Suite.Test PASSED|FAILED|SKIPPED".
#
# Why text and not `-x`: the XML report (CUnit's automated mode) only knows
# success and failure; libiscsi skips a test by logging "[SKIPPED] ..." and
# then passing it (CU_PASS), and that log line goes to stdout, not the XML.
# In verbose mode everything (CUnit's "Suite:"/"Test:" lines and libiscsi's
# logging) is written to stdout by one process in order, so the log between
# "  Test: NAME ..." and the "passed"/"FAILED" that ends it belongs to that
# test.  A test that passed and logged "[SKIPPED]" is SKIPPED.
#
# To be sure the parse is right, the counts are checked against CUnit's own
# "Run Summary" (tests ran, tests failed); any mismatch, or a missing summary
# (crash, timeout), is reported on stderr and the exit status is 2.
#
# Variables (awk -v): results=FILE (required), details=FILE (failed tests'
# log excerpts), maxlog=N (log lines kept per failed test), maxasserts=N.

BEGIN {
	if (results == "") { print "parse.awk: results=FILE is required" > "/dev/stderr"; exit 2 }
	if (details == "") details = "/dev/null"
	if (maxlog == "") maxlog = 12
	if (maxasserts == "") maxasserts = 5
	printf "" > results
	printf "" > details
	cur = ""; state = ""; suite = ""
	n_tests = 0; n_failed = 0; summary_seen = 0; bad = 0
}

function start_test(name, rest) {
	cur = suite "." name
	state = "running"; skipped = 0
	nlog = 0; nlog_total = 0; nassert = 0; last_log = ""; repeat = 0
	handle_running(rest)
}

# A line of log (or the result) while the test is running.
function handle_running(line) {
	if (line ~ /^passed/) { finish_passed(); return }
	if (line ~ /^FAILED/) { state = "failed"; return }
	if (line ~ /\[SKIPPED\]/) skipped = 1
	keep_log(line)
}

function keep_log(line) {
	sub(/^[ \t]+/, "", line)
	if (line == "") return
	nlog_total++
	if (line == last_log) { repeat++; return }
	flush_repeat()
	last_log = line
	if (nlog < maxlog) logbuf[++nlog] = line
}

function flush_repeat() {
	if (repeat > 0 && nlog < maxlog) logbuf[++nlog] = "(previous line repeated " repeat " more times)"
	repeat = 0
}

function finish_passed() {
	n_tests++
	print cur, (skipped ? "SKIPPED" : "PASSED") >> results
	cur = ""; state = ""
}

function finish_failed(   i) {
	n_tests++; n_failed++
	flush_repeat()
	print cur, "FAILED" >> results
	print "=== " cur >> details
	for (i = 1; i <= nlog; i++) print "    " logbuf[i] >> details
	if (nlog_total > nlog) print "    ... (" nlog_total " log lines in all)" >> details
	for (i = 1; i <= nassert && i <= maxasserts; i++) print "    " assertbuf[i] >> details
	if (nassert > maxasserts) print "    ... (" nassert " failed assertions in all)" >> details
	cur = ""; state = ""
}

# Lines that end a failed test's list of assertions.
function close_failed() { if (state == "failed") finish_failed() }

/^Suite: / {
	close_failed()
	if (state == "running") { print "parse.awk: test " cur " has no result before '" $0 "'" > "/dev/stderr"; bad = 1; cur = ""; state = "" }
	suite = substr($0, 8)
	next
}

/^  Test: [^ ]+ \.\.\./ {
	close_failed()
	if (state == "running") { print "parse.awk: test " cur " has no result before '" $0 "'" > "/dev/stderr"; bad = 1 }
	name = $2
	rest = $0
	sub(/^  Test: [^ ]+ \.\.\./, "", rest)
	start_test(name, rest)
	next
}

/^Run Summary:/ {
	close_failed()
	next
}

/^[ \t]+tests[ \t]+[0-9]+[ \t]+[0-9]+[ \t]+[0-9]+[ \t]+[0-9]+/ {
	# "               tests    230    230    198     32        0"
	summary_seen = 1; sum_ran = $3; sum_failed = $5
	next
}

{
	if (state == "running") { handle_running($0); next }
	if (state == "failed") {
		if ($0 ~ /^    [0-9]+\. /) { a = $0; sub(/^[ \t]+/, "", a); if (nassert < maxasserts) assertbuf[nassert + 1] = a; nassert++ }
		next
	}
}

END {
	close_failed()
	if (state == "running") {
		print "parse.awk: the suite stopped during " cur " (no result, no summary: crashed, hung or killed)" > "/dev/stderr"
		print cur, "FAILED" >> results
		print "=== " cur " (the suite stopped here)" >> details
		for (i = 1; i <= nlog; i++) print "    " logbuf[i] >> details
		exit 2
	}
	if (!summary_seen) { print "parse.awk: no CUnit 'Run Summary' in the output" > "/dev/stderr"; exit 2 }
	if (sum_ran != n_tests || sum_failed != n_failed) {
		printf "parse.awk: parsed %d tests (%d failed) but CUnit reports %d ran (%d failed)\n", n_tests, n_failed, sum_ran, sum_failed > "/dev/stderr"
		exit 2
	}
	if (bad) exit 2
}
