"""The origin pod's servers: nginx answering every request with 1 KiB (keep-alive unless the
request says ``Connection: close``; on a second port over HTTP/2 cleartext), and bulk.py's
sink/source. The config is a pure function.
"""

from __future__ import annotations

from pathlib import Path

HTTP_PORT = 8080
H2_PORT = 8081  # the same answer over HTTP/2 cleartext (prior knowledge): the h2 group's direct
BULK_PORT = 9000
BODY_BYTES = 1024


def nginx_conf(workdir: Path, nofile: int) -> str:
    """``nofile`` is the descriptor limit nginx runs with: its connections may use all but a
    few of them (10,000 held connections through a proxy are 10,000 here)."""
    connections = max(1024, nofile - 256)
    temps = "\n".join(
        f"    {kind}_temp_path {workdir}/{kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    return f"""# One process, no master, on the core taskset gives it; {BODY_BYTES} bytes an answer.
daemon off;
master_process off;
worker_processes 1;
worker_rlimit_nofile {nofile};
pid {workdir}/nginx.pid;
error_log {workdir}/error.log warn;
events {{
    worker_connections {connections};
    multi_accept on;
}}
http {{
    access_log off;
{temps}
    keepalive_requests 10000000;
    keepalive_timeout 300s;
    server {{
        listen {HTTP_PORT} backlog=4096;
        location / {{
            default_type application/octet-stream;
            return 200 "{"x" * BODY_BYTES}";
        }}
    }}
    server {{
        listen {H2_PORT} http2 backlog=4096;
        http2_max_requests 10000000;
        location / {{
            default_type application/octet-stream;
            return 200 "{"x" * BODY_BYTES}";
        }}
    }}
}}
"""
