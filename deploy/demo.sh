#!/usr/bin/env bash
# The whole pipeline on this machine: Mosquitto, InfluxDB, the collector, a
# speed server, and one school's agent measuring for real; then a simulated
# fleet with its registry, and the national rollout the ministry reads. Prints
# what was stored and how to look. The services keep running afterwards.
#
#   bash deploy/demo.sh            bring it up and measure
#   bash deploy/demo.sh stop       stop the services
#   bash deploy/demo.sh --help
#
# Extra options go to `deploy/localstack.py up` (ports: --mqtt-port ...);
# SCHOOL_MONITOR_RUN_DIR chooses the run directory (default .run/stack).
set -euo pipefail
cd "$(dirname "$0")/.."
run_dir="${SCHOOL_MONITOR_RUN_DIR:-.run/stack}"

case "${1:-}" in
    -h|--help) sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    stop) exec python3 deploy/localstack.py down --run-dir "$run_dir" ;;
esac

bash deploy/setup.sh
echo "== starting the services (run directory $run_dir)"
.venv/bin/python deploy/localstack.py up --run-dir "$run_dir" "$@"
set -a
# shellcheck source=/dev/null
. "$run_dir/stack.env"
set +a
school="${SCHOOL_AGENT_SCHOOL_ID:-KZ-DEMO-0001}"
export SCHOOL_AGENT_SCHOOL_ID="$school" SCHOOL_AGENT_STATE_DIR="$run_dir/agent-state"

echo "== school $school: one speed test against the local speed server, published over MQTT"
.venv/bin/school-agent run --once

query="SELECT school_id, result, download_mbps, upload_mbps, latency_ms, meets_threshold FROM speed WHERE school_id = '$school' ORDER BY time DESC LIMIT 5"
echo "== what the collector stored in InfluxDB ($SCHOOL_COLLECTOR_INFLUX__URL, database $SCHOOL_COLLECTOR_INFLUX__DATABASE)"
echo "   InfluxQL: $query"
for _ in $(seq 1 60); do
    if .venv/bin/school-collector query --format json "$query" | grep -q '"rows": \[{'; then
        break
    fi
    sleep 0.5
done
.venv/bin/school-collector query "$query"
status="SELECT status, reason, cpu_percent, memory_percent, disk_percent, uptime_s FROM agent WHERE school_id = '$school' ORDER BY time DESC LIMIT 2"
echo "   InfluxQL: $status"
.venv/bin/school-collector query "$status"

fleet="${SCHOOL_MONITOR_DEMO_SCHOOLS:-300}"
registry="$run_dir/schools.csv"
echo "== the ministry's view: a simulated fleet of $fleet schools over the last 30 days (written straight into InfluxDB)"
.venv/bin/school-collector simulate --schools "$fleet" --seed 1 --via influx --registry-out "$registry"
# This school too, so that its own measurements count and are not refused as unknown.
echo "$school,\"Demo school, Almaty\",Almaty,Medeu district,urban,43.23800,76.94500,800,60,panic_button;turnstile,yes" >> "$registry"
echo "== the registry: every school the percentages count ($registry)"
.venv/bin/school-collector registry import "$registry"
echo "== the national rollout (school-collector rollout)"
.venv/bin/school-collector rollout
echo "== this month's report for people who do not open Grafana (school-collector report)"
.venv/bin/school-collector report --out "$run_dir/report.html"
region="$(sed -n '2p' "$registry" | python3 -c 'import csv, sys; print(next(csv.reader(sys.stdin))[2])')"
cat <<EOT

The services are still running. Try:
  set -a; . $run_dir/stack.env; set +a
  .venv/bin/school-collector rollout                                  # the national table
  .venv/bin/school-collector rollout --region '$region' --format csv   # one region, for a spreadsheet
  .venv/bin/school-collector rollout --format json                    # for programs
  xdg-open $run_dir/report.html                                       # the month, offline, one file
  .venv/bin/school-collector query "SELECT * FROM speed WHERE school_id = '$school'"
  curl -G '$SCHOOL_COLLECTOR_INFLUX__URL/query' --data-urlencode 'db=$SCHOOL_COLLECTOR_INFLUX__DATABASE' --data-urlencode "q=$query"
Grafana: copy grafana/provisioning/ to /etc/grafana/provisioning/ on a Grafana host
and point its InfluxDB data source at $SCHOOL_COLLECTOR_INFLUX__URL (grafana/README.md).
Logs are in $run_dir/*.log. Stop everything with: bash deploy/demo.sh stop
EOT
