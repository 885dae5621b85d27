#!/bin/sh
# Runs once, when InfluxDB 2.x is first set up: maps the buckets to the database
# and retention policies InfluxQL uses (the collector's rollup, `school-collector
# query`, Grafana): school_monitor/autogen, the raw points (the bucket's own
# retention), school_monitor/history, the registry and the rollout
# percentages, kept for ever (collector/README.md, "Retention and summaries"), and
# school_monitor/state, each school's and device's current state, kept a day
# (collector/README.md, "The current state").
set -e
bucket_id=$(influx bucket list --name school_monitor --hide-headers | cut -f 1)
influx v1 dbrp create --db school_monitor --rp autogen --bucket-id "$bucket_id" --default
history_id=$(influx bucket create --name school_monitor/history --retention 0 --hide-headers | cut -f 1)
influx v1 dbrp create --db school_monitor --rp history --bucket-id "$history_id"
state_id=$(influx bucket create --name school_monitor/state --retention 1d --hide-headers | cut -f 1)
influx v1 dbrp create --db school_monitor --rp state --bucket-id "$state_id"
