"""school-monitor collector: validates agents' MQTT messages and stores them in InfluxDB."""
