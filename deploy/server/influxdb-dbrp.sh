#!/bin/sh
# Runs once, when InfluxDB 2.x is first set up: maps the bucket to the database
# name InfluxQL uses (the collector's rollup, `school-collector query`, Grafana).
set -e
bucket_id=$(influx bucket list --name school_monitor --hide-headers | cut -f 1)
influx v1 dbrp create --db school_monitor --rp autogen --bucket-id "$bucket_id" --default
