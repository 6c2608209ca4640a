# Sourced by deploy/build.sh and vagrant/build-box.sh: debian_mirror prints the Debian mirror
# apt already uses for bookworm, so debootstrap fetches from the same place (no host is
# hard-coded).
# deb822 .sources first, then sources.list.
debian_mirror() {
  local uri
  uri=$(awk '
      /^[[:space:]]*$/ { if (uris != "" && suites ~ /(^| )bookworm( |$)/ && !found) { print uris; found = 1 } uris = ""; suites = ""; next }
      /^URIs:/   { $1 = ""; uris = $2 }
      /^Suites:/ { $1 = ""; suites = $0 " " }
      END { if (uris != "" && suites ~ /(^| )bookworm( |$)/ && !found) print uris }
    ' /etc/apt/sources.list.d/*.sources 2>/dev/null | head -n 1)
  if [[ -z $uri && -r /etc/apt/sources.list ]]; then
    uri=$(awk '$1 == "deb" { i = 2; if ($2 ~ /^\[/) { while ($i !~ /\]$/) i++; i++ }
                             if ($(i + 1) == "bookworm") { print $i; exit } }' /etc/apt/sources.list)
  fi
  printf '%s\n' "$uri"
}
