"""Grafana: dashboards as code, provisioning and alert rules (see grafana/README.md)."""
