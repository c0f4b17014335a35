#!/bin/sh
# A BITS upload with curl, one packet at a time: what a Windows client sends and what
# bits-wsgi answers (docs/protocol.md, "The protocol in one page").
#
#   sh examples/curl-upload.sh FILE http://127.0.0.1:8000/dir/name.bin
#
# FILE must not be empty. Add -u NAME:PASSWORD to each curl for a server with authentication.
set -eu
file=$1
url=$2
size=$(wc -c < "$file" | tr -d ' ')
protocol='{7df0354d-249b-430f-820d-3d2a9bef4931}'
bits() {  # curl for one packet: print the answer's status line and BITS headers
    curl -sS -X BITS_POST -H 'Expect:' -D - -o /dev/null "$@" "$url" | tr -d '\r' |
        grep -Ei '^(HTTP/|BITS-)'
}

echo '# Ping'
bits -H 'BITS-Packet-Type: Ping' -H 'Content-Length: 0'

echo '# Create-Session: the answer names the session'
answer=$(bits -H 'BITS-Packet-Type: Create-Session' \
    -H "BITS-Supported-Protocols: $protocol" -H 'Content-Length: 0')
echo "$answer"
session=$(echo "$answer" | sed -n 's/^[Bb][Ii][Tt][Ss]-[Ss]ession-[Ii]d: //p')

echo '# Fragment: the whole file in one (Windows sends up to 13 MB at a time)'
bits -H 'BITS-Packet-Type: Fragment' -H "BITS-Session-Id: $session" \
    -H "Content-Range: bytes 0-$((size - 1))/$size" -H 'Content-Type:' \
    --data-binary "@$file"

echo '# Close-Session: done; the file is in place'
bits -H 'BITS-Packet-Type: Close-Session' -H "BITS-Session-Id: $session" \
    -H 'Content-Length: 0'
