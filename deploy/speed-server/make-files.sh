#!/usr/bin/env bash
# Create the static files of a Speedtest Mini server in DIR (default /var/www/speedtest):
# index.html, speedtest/latency.txt and speedtest/random{N}x{N}.jpg (about 2*N*N random bytes).
set -euo pipefail
dir="${1:-/var/www/speedtest}"
mkdir -p "$dir/speedtest"
printf 'test=test\n' > "$dir/speedtest/latency.txt"
cat > "$dir/index.html" <<'HTML'
<!doctype html><html><head><title>speed server</title></head>
<body><script>var upload_extension: "php";</script></body></html>
HTML
for n in 350 500 750 1000 1500 2000 2500 3000 3500 4000; do
    head -c $((2 * n * n)) /dev/urandom > "$dir/speedtest/random${n}x${n}.jpg"
done
chmod -R a+rX "$dir"
echo "speed-server files written to $dir"
