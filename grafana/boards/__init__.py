"""One module per dashboard: national, school, devices, fleet, pipeline."""
