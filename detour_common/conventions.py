"""The numbers init, the interceptor and the sidecar share (Istio's, so operators feel at home).

Defaults only: each program still takes its own flags; these are what the flags default to and
what one program assumes of another when it cannot be told (the mark the sidecar puts on a
TPROXY connection is the one init's rules route by).
"""

from __future__ import annotations

PROXY_UID = 1337  # traffic of this uid (and gid) is never captured
PROXY_GID = 1337
OUTBOUND_PORT = 15001
INBOUND_PORT = 15006
DNS_PORT = 15053
ADMIN_PORT = 15000
STATS_PORT = 15020
READY_PORT = 15021
# The sidecar marks its TPROXY connections to the app with this; init's policy routing sends
# the app's replies (marked on the way back) to the local table, i.e. to the sidecar.
TPROXY_MARK = 1337
TPROXY_ROUTE_TABLE = 133
# Inbound connections reach the app from here (REDIRECT mode), so its replies are not captured.
INBOUND_PASSTHROUGH_V4 = "127.0.0.6"
INBOUND_PASSTHROUGH_V6 = "::6"
